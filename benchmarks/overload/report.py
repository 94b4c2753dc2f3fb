"""The overload benchmark's report: its targets, the Markdown summary, the timeline plot
and the JSON results file (headed by commandline.provenance's keys).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.overload.figures import BUDGET_MS, CLASSES, RECOVERY_P99_FACTOR, WINDOW_S

COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "darkred", "black", "tab:pink",
          "tab:grey", "tab:olive")  # of CLASSES in the plot
# targets
GOODPUT_SHARE, RECOVERY_S = 0.9, 5.0
RSS_GROWTH, BIG_P99_FACTOR, BUDGET_WITHIN, BUDGET_OK = 0.10, 5.0, 0.95, 0.90


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def seconds_or_never(value: float | None) -> str:
    return "not within the recovery phase" if value is None else f"{value:g} s"


def nonzero(row: dict) -> dict:
    return {name: count for name, count in row["statuses"].items() if count}


def targets(results: dict, limit_ms: float) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every phase that ran."""
    rows = []
    if "overload" in results:
        over, after = results["overload"], results["recovery"]
        fives = over["statuses"]["503"] + over["statuses"]["5xx"]
        first = after["first_request"]
        rows += [
            ("overload: no 5xx", f"{fives}", fives == 0),
            (f"overload: goodput >= {GOODPUT_SHARE:.0%} of capacity",
             f"{over['goodput_share']:.1%}", over["goodput_share"] >= GOODPUT_SHARE),
            (f"overload: p99 of 200s <= {limit_ms:g} ms (UQ_BATCH_MAX_LATENCY_MS)",
             f"{fmt(over['p99_ms'])} ms", over["p99_ms"] is not None
             and over["p99_ms"] <= limit_ms),
            ("overload: every 429 carries Retry-After",
             f"{over['429_without_retry_after']} of {over['statuses']['429']} without",
             over["429_without_retry_after"] == 0),
            (f"recovery: first request 200 within {limit_ms:g} ms",
             f"{first['status']} in {first['latency_ms']:.1f} ms",
             first["status"] == 200 and first["latency_ms"] <= limit_ms),
            (f"recovery: p99 within {RECOVERY_P99_FACTOR:g}x capacity's in {RECOVERY_S:g} s",
             seconds_or_never(after["p99_back_after_s"]), after["p99_back_after_s"] is not None
             and after["p99_back_after_s"] <= RECOVERY_S),
        ]
    rss = results.get("rss_mb", {})
    if rss.get("growth") is not None:
        rows.append((f"server RSS grows <= {RSS_GROWTH:.0%}", f"{rss['growth']:+.1%}",
                     rss["growth"] <= RSS_GROWTH))
    if "big" in results:
        ratio = results["big"]["p99_ratio"]
        rows.append((f"small p99 beside big <= {BIG_P99_FACTOR:g}x idle p99",
                     times(ratio), ratio is not None and ratio <= BIG_P99_FACTOR))
    if "budget" in results:
        budget = results["budget"]
        rows += [
            (f"budget {BUDGET_MS:g} ms: >= {BUDGET_WITHIN:.0%} of 200s within it",
             f"{budget['share_200_within_budget']:.1%}",
             budget["share_200_within_budget"] >= BUDGET_WITHIN),
            (f"budget {BUDGET_MS:g} ms: >= {BUDGET_OK:.0%} of requests answered 200",
             f"{budget['share_200']:.1%}", budget["share_200"] >= BUDGET_OK),
        ]
    return rows


def phase_rows(results: dict) -> list[tuple[str, dict]]:
    rows = [(name, results[name]) for name in ("capacity", "overload", "recovery")
            if name in results]
    if "big" in results:
        rows += [("small alone", results["big"]["idle"]),
                 ("small beside big", results["big"]["small"]), ("big", results["big"]["big"])]
    if "budget" in results:
        rows.append(("budget", results["budget"]))
    return rows


def table(results: dict) -> list[str]:
    head = ["| phase | requests | 200/s | p50 ms | p99 ms | 429 p99 ms | 429 at the door | "
            + " | ".join(CLASSES) + " | late | send lag p99 ms |",
            "|---" * (9 + len(CLASSES)) + "|"]
    return head + [
        f"| {name} | {row['requests']} | {row['goodput_rps']:.1f} | {fmt(row['p50_ms'])} "
        f"| {fmt(row['p99_ms'])} | {fmt(row['p99_429_ms'])} | {row['429_at_door']} | "
        + " | ".join(str(row["statuses"][c]) for c in CLASSES)
        + f" | {row['late']} | {fmt(row['send_lag_p99_ms'])} |"
        for name, row in phase_rows(results)]


def target_lines(rows: list[tuple[str, str, bool]]) -> list[str]:
    return ["| target | measured | |", "|---|---|---|"] + [
        f"| {name} | {measured} | {'PASS' if met else 'FAIL'} |" for name, measured, met in rows]


def markdown(report: dict, plot_path: Path) -> str:
    results = report["results"]
    lines = [f"# Overload and latency budgets: {report['model']}", "",
             f"Server `batch_max_latency_ms` {report['batch_max_latency_ms']}, N "
             f"{report['n_samples']}, {report['clients']} clients, images: {report['images']}.",
             ""]
    lines += table(results) + [""] + target_lines(report["targets"])
    if "recovery" in results:
        first_200 = results["recovery"]["first_200"] or {}
        lines += ["", f"Recovery: first 200 answered {fmt(first_200.get('answered_after_s'), 3)}"
                  " s after the overload; largest Retry-After under overload "
                  f"{fmt(results['overload']['max_retry_after_s'])} s."]
    if "budget" in results:
        lines += ["", f"Budget: N picked {results['budget']['n_samples_picked']}, budget "
                  f"limited {results['budget']['budget_limited_share']:.1%}."]
    lines += ["", "CPU cores used, this client / the server: " + ", ".join(
        f"{phase['name']} {phase['client_cpu_cores']:.2f} / "
        f"{fmt(phase['server_cpu_cores'], 2)}" for phase in report["phases"]) + "."]
    rss = results.get("rss_mb", {})
    lines += ["", f"Server RSS: {fmt(rss.get('before'))} MiB after the warm-up, "
              f"{fmt(rss.get('after'))} MiB at the end.", "", f"![timeline]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], phases: list[dict], capacity: float | None, limit_ms: float,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, statuses, p99, cores) = plt.subplots(
        4, 1, sharex=True, figsize=(12, 11), height_ratios=(3, 3, 3, 2))
    for number, phase in enumerate(phases):
        part = [r for r in rows if r["phase"] == phase["name"]]
        t = [r["t_s"] + WINDOW_S / 2 for r in part]
        first = number == 0
        rates.plot(t, [r["answered_per_s"] for r in part], color="tab:blue",
                   label="HTTP answers/s" if first else None)
        rates.plot(t, [r["goodput_per_s"] for r in part], color="tab:green",
                   label="goodput (200/s)" if first else None)
        statuses.stackplot(t, *[[r[c] for r in part] for c in CLASSES], colors=COLORS,
                           labels=CLASSES if first else ())
        p99.plot(t, [r["p99_ms"] if r["p99_ms"] is not None else math.nan for r in part],
                 color="tab:red", label="p99 of 200s (small requests)" if first else None)
        for name, color in (("server", "tab:brown"), ("client", "tab:cyan")):
            cores.plot(t, [r[f"{name}_cpu_cores"] if r[f"{name}_cpu_cores"] is not None
                           else math.nan for r in part], color=color,
                       label=f"{name} CPU (cores)" if first else None)
        for axis in (rates, statuses, p99, cores):
            axis.axvspan(phase["start_s"], phase["end_s"], color="grey",
                         alpha=0.04 + 0.06 * (number % 2))
        rates.text((phase["start_s"] + phase["end_s"]) / 2, 1.02, phase["name"], ha="center",
                   fontsize=8, transform=rates.get_xaxis_transform())
    if capacity:
        rates.axhline(capacity, color="grey", linestyle="--", label="capacity")
    p99.axhline(limit_ms, color="grey", linestyle="--", label="UQ_BATCH_MAX_LATENCY_MS")
    p99.set_yscale("log")
    rates.set(ylabel="per second, by answer time")
    statuses.set(ylabel="requests sent per second")
    p99.set(ylabel="ms, by send time")
    cores.set(ylabel="cores", xlabel="seconds (1 s windows)", ylim=(0, None))
    for axis in (rates, statuses, p99, cores):
        axis.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(report: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_path, summary_path = output.with_suffix(".png"), output.with_suffix(".md")
    capacity = report["results"].get("capacity", {}).get("goodput_rps")
    plot(report["timeline"], report["phases"], capacity, report["batch_max_latency_ms"],
         plot_path)
    summary_path.write_text(markdown(report, plot_path))
    report = {**report, "targets": [{"target": name, "measured": measured, "met": met}
                                    for name, measured, met in report["targets"]]}
    output.write_text(json.dumps(report, indent=2, allow_nan=False))
    print(f"\nwrote {output}, {summary_path.name} and {plot_path.name}")
