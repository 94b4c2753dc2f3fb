"""The through-HTTP drift replay, briefly, against the test run's real server."""

import json

from loadtest.drift_replay import main


def test_the_replay_reads_the_drift_state_through_http(server, tmp_path, capsys):
    output = tmp_path / "drift.json"
    argv = ["--host", server, "--test-requests", "12", "--shifted-requests", "3",
            "--poll-every", "5", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads(output.read_text())
    assert report["command"] == " ".join(["python -m loadtest.drift_replay", *argv])
    assert {"commit", "date", "machine"} <= report.keys()
    assert report["observed_test"] == 12 and report["n_samples"] == 8
    assert report["shifted_set"] == "gaussian_noise"  # 8 x 8 digits: no upscaled digits
    assert [poll["requests"] for poll in report["polls"]] == [5, 10, 12]
    assert report["window"] == 200 and isinstance(report["false_alarms"], int)
    assert set(report["targets"]) == {"no_alarm_on_test", "alarm_within_200"}
    assert "alarms over 12 test requests" in capsys.readouterr().out


def test_only_loopback_hosts(capsys):
    assert main(["--host", "http://192.0.2.1:3000"]) == 2
    assert "must be on loopback" in capsys.readouterr().err
