"""uq-loadtest with n_samples "auto": parsing, the report's auto row, and a real sweep."""

import argparse
import csv
import json

import pytest

from commandline.provenance import provenance
from loadtest.report import QUALITY_COLUMNS, write_report
from loadtest.service_metrics import histogram_change
from loadtest.sweep import counts_or_auto, main


def test_samples_take_auto_after_the_counts():
    assert counts_or_auto("30,auto,1") == (1, 30, "auto")
    assert counts_or_auto("auto") == ("auto",)
    for bad in ("Auto", "0,auto", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            counts_or_auto(bad)


def test_mean_n_comes_from_the_histogram_change():
    before = {"uq_n_samples_count": 10.0, "uq_n_samples_sum": 100.0,
              'uq_n_samples_bucket{le="10.0"}': 4.0, 'uq_n_samples_bucket{le="+Inf"}': 10.0,
              'uq_n_samples_bucket{le="20.0"}': 10.0}
    after = {"uq_n_samples_count": 20.0, "uq_n_samples_sum": 220.0,
             'uq_n_samples_bucket{le="10.0"}': 12.0, 'uq_n_samples_bucket{le="+Inf"}': 20.0,
             'uq_n_samples_bucket{le="20.0"}': 20.0}
    change = histogram_change(before, after)
    assert change["mean_n_samples"] == 12.0
    assert change["n_samples_shares"] == pytest.approx({"10": 0.8, "20": 0.2})
    assert histogram_change({}, {}) == {}


def test_the_report_sets_auto_beside_the_fixed_n(tmp_path):
    rows = [{"path": "/predict", "n_samples": n, "users": 4, "requests": 100, "p50_ms": 10.0,
             "p95_ms": p95, "p99_ms": p95, "rps": rps, "failures": refused,
             "refused": refused, "mean_n_samples": mean}
            for n, p95, rps, refused, mean in ((10, 20.0, 50.0, 0, 10.0),
                                               (50, 60.0, 12.0, 117, 50.0),
                                               ("auto", 25.0, 40.0, 0, 11.5))]
    evaluation = {"by_n_samples": [
        {"n_samples": n, "accuracy": accuracy, "nll": nll, "ece": 0.01, "brier": 0.1,
         "estimator_error": 0.01, "flagged_fraction": 0.2, "selective_error": 0.01}
        for n, accuracy, nll in ((10, 0.90, 0.28), (50, 0.905, 0.27))],
        "auto": {"n_samples": "auto", "accuracy": 0.904, "nll": 0.273, "ece": 0.008,
                 "brier": 0.1, "estimator_error": 0.01, "flagged_fraction": 0.2,
                 "selective_error": 0.018, "mean_n_samples": 11.7}}
    advice = write_report(rows, evaluation, 100.0, tmp_path, provenance(["uq-loadtest"]))
    assert advice["/predict"]["n_samples"] == 50  # auto is not among the fixed N
    assert rows[2]["accuracy"] == 0.904  # the evaluation's auto row
    markdown = (tmp_path / "tradeoff.md").read_text()
    assert "| /predict | auto | 11.50 |" in markdown
    assert ("- `/predict` auto: mean N 11.50, 40.0 200s/s, 0 refused (0.80x N=10, which had 0 "
            "refused, 3.33x N=50, which had 117 refused)") in markdown
    assert "| /predict | 50 | 50.00 | 4 | 10 | 60 | 60 | 12.0 | 117 | 117 |" in markdown
    with open(tmp_path / "tradeoff.csv", newline="") as file:
        assert [row["n_samples"] for row in csv.DictReader(file)] == ["10", "50", "auto"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    results = json.loads((tmp_path / "tradeoff.json").read_text())
    assert results["command"] == "uq-loadtest"
    assert [row["refused"] for row in results["rows"]] == [0, 117, 0]


def test_a_sweep_with_auto_against_the_real_server(server, tmp_path):
    evaluation_path = tmp_path / "evaluation.json"
    evaluation_path.write_text(json.dumps({"by_n_samples": [
        {"n_samples": 2, **dict.fromkeys(QUALITY_COLUMNS, 0.1)}]}))
    code = main(["--host", server, "--samples", "2,auto", "--paths", "/predict_batched",
                 "--duration", "4", "--users", "2", "--evaluation", str(evaluation_path),
                 "--output-dir", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "tradeoff.csv", newline="") as file:
        fixed, auto = list(csv.DictReader(file))
    assert (fixed["n_samples"], auto["n_samples"]) == ("2", "auto")
    assert int(auto["failures"]) == 0 and int(auto["requests"]) > 0
    assert float(fixed["mean_n_samples"]) == pytest.approx(2.0)
    assert 8 <= float(auto["mean_n_samples"]) <= 100  # the test card's rounds: 8 to 100
    assert "- `/predict_batched` auto: mean N" in (tmp_path / "tradeoff.md").read_text()
