"""The sample-count tradeoff report: tradeoff.csv, tradeoff.md, tradeoff.png and
tradeoff.json (the rows and the recommendation, with where they come from: command,
commit, date, machine).

Rows: one per (path, n_samples) with locust's latency percentiles, throughput (200
answers per second), failures and the refusals (429) among them, plus the quality
figures of uq-evaluate's evaluation.json for the same N when one is given. A row for
``n_samples: "auto"`` (the adaptive sample count) takes the evaluation's "auto" row,
stands in the plot at the mean N its predictions used, and is set beside the fixed N
rather than among them in the recommendation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from training.evaluation import ACCURACY_TOLERANCE, NLL_TOLERANCE, near_best  # noqa: E402

LOAD_COLUMNS = ("path", "n_samples", "users", "requests", "p50_ms", "p95_ms", "p99_ms", "rps",
                "failures", "refused", "mean_n_samples")
AUTO = "auto"
QUALITY_COLUMNS = ("accuracy", "nll", "ece", "brier", "estimator_error", "flagged_fraction",
                   "selective_error")


def merge_quality(rows: list[dict[str, Any]], evaluation: dict[str, Any] | None) -> None:
    """Add the evaluation's quality columns to the rows of the same N (in place)."""
    if evaluation is None:
        return
    by_n = {row["n_samples"]: row for row in evaluation["by_n_samples"]}
    if evaluation.get("auto"):
        by_n[AUTO] = evaluation["auto"]
    for row in rows:
        quality = by_n.get(row["n_samples"])
        if quality:
            row.update({column: quality[column] for column in QUALITY_COLUMNS})


def recommend(
    rows: list[dict[str, Any]], evaluation: dict[str, Any] | None, latency_budget_ms: float
) -> dict[str, dict[str, Any]]:
    """Per path: the smallest swept N that is near the best evaluated quality (the rule
    of uq-evaluate's plateau, training.evaluation.near_best: not shown, within Monte
    Carlo and test-set noise, to fall short by more than the tolerances; point
    differences for an evaluation.json without intervals) and whose p95 fits the
    budget, with the reason when none does."""
    paths = dict.fromkeys(row["path"] for row in rows)
    if evaluation is None:
        return {path: {"n_samples": None,
                       "reason": "no quality figures: pass --evaluation evaluation.json"}
                for path in paths}
    quality = evaluation["by_n_samples"]
    quality_by_n = {row["n_samples"]: row for row in quality}
    advice: dict[str, dict[str, Any]] = {}
    for path in paths:
        candidates = sorted((r for r in rows if r["path"] == path and r["n_samples"] != AUTO),
                            key=lambda r: r["n_samples"])
        good_enough = [r for r in candidates if r["n_samples"] in quality_by_n
                       and near_best(quality_by_n[r["n_samples"]], quality)]
        fitting = [r for r in good_enough if r["p95_ms"] <= latency_budget_ms]
        if fitting:
            chosen = fitting[0]
            figures = quality_by_n[chosen["n_samples"]]
            advice[path] = {"n_samples": chosen["n_samples"], "p95_ms": chosen["p95_ms"],
                            "rps": chosen["rps"], "accuracy": figures["accuracy"],
                            "nll": figures["nll"]}
        elif good_enough:
            advice[path] = {"n_samples": None, "reason": (
                f"N={good_enough[0]['n_samples']} reaches the quality, but its p95 "
                f"{good_enough[0]['p95_ms']:.0f} ms is over the {latency_budget_ms:.0f} ms budget")}
        else:
            advice[path] = {"n_samples": None, "reason": (
                "no swept N is near the best evaluated quality; sweep larger N")}
    return advice


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(LOAD_COLUMNS) + [c for c in QUALITY_COLUMNS if any(c in r for r in rows)]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(rows: list[dict[str, Any]], advice: dict[str, dict[str, Any]],
                   latency_budget_ms: float, path: Path) -> None:
    quality = [c for c in ("accuracy", "nll", "ece", "estimator_error")
               if any(c in r for r in rows)]
    header = ["path", "N", "mean N", "users", "p50 ms", "p95 ms", "p99 ms", "200s/s", "refused",
              "failures", *quality]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mean_n = f"{row['mean_n_samples']:.2f}" if "mean_n_samples" in row else ""
        cells = [row["path"], row["n_samples"], mean_n, row["users"], f"{row['p50_ms']:.0f}",
                 f"{row['p95_ms']:.0f}", f"{row['p99_ms']:.0f}", f"{row['rps']:.1f}",
                 row["refused"], row["failures"]]
        cells += [f"{row[c]:.4f}" if c in row else "" for c in quality]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"Recommendation (quality within {ACCURACY_TOLERANCE:.1%} accuracy and "
              f"{NLL_TOLERANCE} NLL of the best, within Monte Carlo noise, p95 within "
              f"{latency_budget_ms:.0f} ms):", ""]
    for api_path, choice in advice.items():
        if choice["n_samples"] is not None:
            lines.append(f"- `{api_path}`: N={choice['n_samples']} (p95 {choice['p95_ms']:.0f} ms,"
                         f" {choice['rps']:.0f} req/s, accuracy {choice['accuracy']:.4f}, "
                         f"NLL {choice['nll']:.4f})")
        else:
            lines.append(f"- `{api_path}`: no N fits: {choice['reason']}")
    lines += auto_lines(rows)
    path.write_text("\n".join(lines) + "\n")


def auto_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per path with an "auto" row: the N its predictions used, and its throughput
    against each fixed N swept on that path, with the refusals of each."""
    lines = []
    for row in rows:
        if row["n_samples"] != AUTO:
            continue
        fixed = [r for r in rows if r["path"] == row["path"] and r["n_samples"] != AUTO]
        used = (f"mean N {row['mean_n_samples']:.2f}, " if "mean_n_samples" in row else "")
        shares = row.get("n_samples_shares") or {}
        spread = ("; predictions by N (histogram bucket: share): " + ", ".join(
            f"<= {bound}: {share:.0%}" for bound, share in shares.items()) if shares else "")
        ratios = ", ".join(f"{row['rps'] / r['rps']:.2f}x N={r['n_samples']}, which had "
                           f"{r['refused']} refused" for r in fixed if r["rps"] > 0)
        lines.append(f"- `{row['path']}` auto: {used}{row['rps']:.1f} 200s/s, "
                     f"{row['refused']} refused" + (f" ({ratios})" if ratios else "") + spread)
    return ["", 'n_samples "auto" (the adaptive sample count):', "", *lines] if lines else []


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency and throughput against N per path, beside accuracy, NLL and ECE."""
    quality = [c for c in ("accuracy", "nll", "ece") if any(c in r for r in rows)]
    panels = 2 + len(quality)
    figure, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.6))
    paths = dict.fromkeys(row["path"] for row in rows)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for api_path, color in zip(paths, colors, strict=False):  # more colours than paths
        for auto in (r for r in rows if r["path"] == api_path and r["n_samples"] == AUTO
                     and "mean_n_samples" in r):  # a star at the mean N it used
            axes[0].plot([auto["mean_n_samples"]], [auto["p95_ms"]], marker="*", markersize=12,
                         color=color, linestyle="none", label=f"{api_path} auto p95")
            axes[1].plot([auto["mean_n_samples"]], [auto["rps"]], marker="*", markersize=12,
                         color=color, linestyle="none", label=f"{api_path} auto")
        mine = sorted((r for r in rows if r["path"] == api_path and r["n_samples"] != AUTO),
                      key=lambda r: r["n_samples"])
        n_values = [r["n_samples"] for r in mine]
        axes[0].plot(n_values, [r["p95_ms"] for r in mine], marker="o", color=color,
                     label=f"{api_path} p95")
        axes[0].plot(n_values, [r["p50_ms"] for r in mine], marker=".", linestyle="--",
                     color=color, label=f"{api_path} p50")
        axes[1].plot(n_values, [r["rps"] for r in mine], marker="o", color=color, label=api_path)
    axes[0].set(xlabel="MC samples N", ylabel="ms", title="Latency")
    axes[1].set(xlabel="MC samples N", ylabel="requests / s", title="Throughput")
    by_n = {r["n_samples"]: r for r in rows if "accuracy" in r}
    auto = by_n.pop(AUTO, None)
    n_quality = sorted(by_n)
    for axis, column in zip(axes[2:], quality, strict=True):
        axis.plot(n_quality, [by_n[n][column] for n in n_quality], marker="o", color="black")
        if auto is not None and "mean_n_samples" in auto:
            axis.plot([auto["mean_n_samples"]], [auto[column]], marker="*", markersize=12,
                      color="tab:red", linestyle="none", label="auto")
        axis.set(xlabel="MC samples N", title=column)
    for axis in axes:
        axis.set_xscale("log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(rows: list[dict[str, Any]], evaluation: dict[str, Any] | None,
                 latency_budget_ms: float, output_dir: Path,
                 origin: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every file of the report; ``origin``: commandline.provenance's keys of the run."""
    merge_quality(rows, evaluation)
    advice = recommend(rows, evaluation, latency_budget_ms)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output_dir / "tradeoff.csv")
    write_markdown(rows, advice, latency_budget_ms, output_dir / "tradeoff.md")
    write_plot(rows, output_dir / "tradeoff.png")
    (output_dir / "tradeoff.json").write_text(json.dumps({
        **origin, "latency_budget_ms": latency_budget_ms, "rows": rows,
        "recommendation": advice}, indent=2))
    return advice

