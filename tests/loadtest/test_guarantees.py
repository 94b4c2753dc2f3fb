"""The through-HTTP check of the service's promises, against the test run's real server."""

import json

from loadtest.guarantees import main


def test_every_calibrated_n_and_the_off_grid_ones_are_judged(server, tmp_path, capsys):
    output = tmp_path / "guarantees.json"
    argv = ["--host", server, "--off-grid", "3,150", "--shifted-rows", "40", "--batch", "16",
            "--output", str(output)]
    assert main(argv) == 0
    report = json.loads(output.read_text())
    assert report["command"] == " ".join(["python -m loadtest.guarantees", *argv])
    assert {"commit", "date", "machine"} <= report.keys()
    rows = {row["n_samples"]: row for row in report["rows"]}
    assert sorted(rows) == [1, 3, 5, 8, 10, 20, 30, 50, 100, 150]
    assert rows[3]["calibrated_n_samples"] == 1 and not rows[3]["calibrated"]
    assert rows[3]["novelty_calibrated_n_samples"] == 5
    assert rows[150]["calibrated_n_samples"] == 100 and rows[8]["calibrated"]
    for row in rows.values():
        assert 0 <= row["selective_error"] <= row["selective_error_upper_bound"] <= 1
        assert 0 <= row["novelty_fraction"] <= row["flagged_fraction"] <= 1
        assert set(row["shifted"]) == {"gaussian_noise", "inverted"}
    assert rows[1]["novelty_fraction"] == 0.0  # one sample has no mutual information
    assert "N=   8: error among unflagged" in capsys.readouterr().out
    table = output.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| 1 | 1 | 1 |")
    assert "| *3* | 1 | 5 |" in table[3]


def test_only_loopback_hosts(capsys):
    assert main(["--host", "http://192.0.2.1:3000"]) == 2
    assert "must be on loopback" in capsys.readouterr().err
