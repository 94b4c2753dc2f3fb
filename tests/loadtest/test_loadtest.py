import csv
import json

import pytest

from loadtest.contract import PREDICTION_FIELDS, RISK_FIELDS, missing_fields
from loadtest.report import recommend
from loadtest.sweep import main

#: Every field the response schema requires (the values do not matter to the checks).
PREDICTION = {**dict.fromkeys(PREDICTION_FIELDS, 0), "risk": dict.fromkeys(RISK_FIELDS, 0)}


def evaluation(rows):
    return {"by_n_samples": [
        {"n_samples": n, "accuracy": accuracy, "nll": nll, "ece": 0.01, "brier": 0.1,
         "estimator_error": 0.1 / n, "flagged_fraction": 0.2, "selective_error": 0.01}
        for n, accuracy, nll in rows
    ]}


def test_smoke_sweep_against_the_real_server(server, tmp_path, capsys):
    evaluation_path = tmp_path / "evaluation.json"
    evaluation_path.write_text(json.dumps(evaluation([(1, 0.90, 0.40), (2, 0.93, 0.30)])))
    argv = ["--host", server, "--samples", "1,2", "--duration", "2", "--users", "2",
            "--evaluation", str(evaluation_path), "--latency-budget-ms", "10000",
            "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    with open(tmp_path / "tradeoff.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["path"], r["n_samples"]) for r in rows] == [
        ("/predict", "1"), ("/predict", "2"), ("/predict_batched", "1"),
        ("/predict_batched", "2")]
    for row in rows:
        assert {"p50_ms", "p95_ms", "p99_ms", "rps", "failures", "refused", "accuracy",
                "nll"} <= row.keys()
        assert int(row["requests"]) > 0 and int(row["failures"]) == int(row["refused"]) == 0
        assert float(row["rps"]) > 0 and float(row["p99_ms"]) >= float(row["p50_ms"])
    markdown = (tmp_path / "tradeoff.md").read_text()
    assert "| /predict_batched | 2 |" in markdown
    assert "- `/predict`: N=2" in markdown  # N=1 is 3% less accurate than N=2
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    results = json.loads((tmp_path / "tradeoff.json").read_text())
    assert results["command"] == " ".join(["uq-loadtest", *argv])
    assert {"commit", "date", "machine"} <= results.keys()
    assert [row["rps"] for row in results["rows"]] == [float(row["rps"]) for row in rows]
    assert results["recommendation"]["/predict"]["n_samples"] == 2
    assert "tradeoff.csv" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "http://10.0.0.8:3000"], "must be on loopback"),
        (["--host", "http://127.0.0.1:3000", "--users", "1000"], "--users must lie in"),
        (["--host", "http://127.0.0.1:3000", "--duration", "0"], "--duration must lie in"),
        (["--host", "http://127.0.0.1:3000", "--paths", "/generate"], "unknown path"),
        (["--host", "http://127.0.0.1:3000", "--serve"], "exactly one of --host"),
        ([], "exactly one of --host"),
        (["--host", "http://127.0.0.1:9"], "cannot read http://127.0.0.1:9/metadata"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_served_model_missing_from_the_store_is_one_line_exit_2(tmp_path, capsys):
    # the server exits at startup; stopping it must not hide why
    argv = ["--serve", "--model", "uq-no-such-model:latest", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "the service exited" in err and "uq-no-such-model" in err and "\n" not in err


FIGURES = [(1, 0.880, 0.40), (10, 0.899, 0.285), (30, 0.9045, 0.272), (100, 0.905, 0.270)]


def load_rows(figures):
    return [{"path": "/predict", "n_samples": n, "p95_ms": p95, "rps": 100.0}
            for (n, _, _), p95 in zip(figures, [5, 10, 20, 80], strict=True)]


def test_recommendation_is_the_smallest_good_enough_n_within_budget():
    # an evaluation.json without intervals: point differences to the best
    quality, rows = evaluation(FIGURES), load_rows(FIGURES)
    chosen = recommend(rows, quality, latency_budget_ms=50)["/predict"]
    assert chosen["n_samples"] == 30 and chosen["accuracy"] == 0.9045
    tight = recommend(rows, quality, latency_budget_ms=15)["/predict"]
    assert tight["n_samples"] is None and "over the 15 ms budget" in tight["reason"]


def test_recommendation_counts_a_shortfall_within_the_noise_as_good_enough():
    quality, rows = evaluation(FIGURES), load_rows(FIGURES)
    intervals = {1: ([0.015, 0.035], [0.11, 0.15]), 10: ([-0.001, 0.013], [0.004, 0.026]),
                 30: ([-0.002, 0.003], [-0.001, 0.005]), 100: ([0.0, 0.0], [0.0, 0.0])}
    for row in quality["by_n_samples"]:
        shortfall, excess = intervals[row["n_samples"]]
        row |= {"accuracy_shortfall_interval": shortfall, "nll_excess_interval": excess}
    # N=10 is 0.006 less accurate than N=100, but its interval reaches below the tolerance
    assert recommend(rows, quality, latency_budget_ms=50)["/predict"]["n_samples"] == 10
    quality["by_n_samples"][1]["nll_excess_interval"] = [0.006, 0.026]  # shown worse
    assert recommend(rows, quality, latency_budget_ms=50)["/predict"]["n_samples"] == 30
    unevaluated = recommend(rows, None, latency_budget_ms=50)["/predict"]
    assert unevaluated["n_samples"] is None and "--evaluation" in unevaluated["reason"]


def test_locust_checks_every_field_of_the_response_schema():
    assert {"label", "expected_entropy", "mutual_information", "risk"} <= set(PREDICTION_FIELDS)
    assert {"flagged", "score", "threshold"} <= set(RISK_FIELDS)
    assert missing_fields({"model": "m", "n_samples": 3, "predictions": [PREDICTION]},
                          "/predict") is None
    assert missing_fields([PREDICTION], "/predict_batched") is None
    broken = {key: value for key, value in PREDICTION.items() if key != "std"}
    assert missing_fields([broken], "/predict_batched") == "std"
    unflagged_risk = {key: value for key, value in PREDICTION["risk"].items() if key != "flagged"}
    no_flag = {**PREDICTION, "risk": unflagged_risk}
    assert missing_fields({"model": "m", "n_samples": 3, "predictions": [no_flag]},
                          "/predict") == "risk.flagged"
    assert missing_fields({"error": "x"}, "/predict") == "model or n_samples"
