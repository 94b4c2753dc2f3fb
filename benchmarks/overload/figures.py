"""The overload benchmark's figures: statuses and latencies of a phase's answers, how
the service recovered after the overload, what the latency budget bought, and the
timeline of every phase in 1 s windows.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from benchmarks.overload.loads import CONNECTION_ERROR, NO_ANSWER, NOT_SENT, Answer
from benchmarks.server_processes import CpuSampler

LATE_S = 0.010  # an open-loop request written later than this after its time is late
WINDOW_S = 1.0
BUDGET_MS = 50.0
RECOVERY_P99_FACTOR = 1.5  # x the capacity phase's p99: the service is back
CLASSES = ("200", "429", "503", "other_4xx", "5xx", "connection_error", "not_sent",
           "no_answer", "other")


def status_class(status: int) -> str:
    if status in (200, 429, 503):
        return str(status)
    named = {CONNECTION_ERROR: "connection_error", NOT_SENT: "not_sent",
             NO_ANSWER: "no_answer"}
    if status in named:
        return named[status]
    return "other_4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "other"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(answers: list[Answer], start: float, end: float) -> dict:
    """Statuses and latencies of ``answers`` (sent from ``start`` to ``end``); the rates
    count those answered by ``end``."""
    ok = [a.ms for a in answers if a.status == 200]
    counts = Counter(status_class(a.status) for a in answers)
    retry = [a.retry_after for a in answers if a.status == 429]
    seconds = end - start
    return {
        "seconds": seconds, "requests": len(answers),
        "goodput_rps": sum(a.status == 200 and a.done < end for a in answers) / seconds,
        "answered_rps": sum(a.status > 0 and a.done < end for a in answers) / seconds,
        "statuses": {name: counts.get(name, 0) for name in CLASSES},
        "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
        "max_ms": max(ok, default=None),
        "p99_429_ms": percentile([a.ms for a in answers if a.status == 429], 99),
        "429_without_retry_after": sum(math.isnan(r) for r in retry),
        "429_at_door": sum(a.at_door for a in answers),
        "max_retry_after_s": max((r for r in retry if not math.isnan(r)), default=None),
        "errors_without_error_body": sum(a.status > 0 and not a.error_body for a in answers),
        "late": sum(a.lag > LATE_S for a in answers),
        "send_lag_p99_ms": percentile([a.lag * 1e3 for a in answers], 99),
    }


def p99_windows(answers: list[Answer], start: float, end: float) -> list[float]:
    """p99 (ms) of the 200s sent in each 1 s window from ``start``; inf when none."""
    count = max(1, math.ceil((end - start) / WINDOW_S - 1e-9))
    latencies: list[list[float]] = [[] for _ in range(count)]
    for a in answers:
        index = int((a.sent - start) / WINDOW_S)
        if a.status == 200 and 0 <= index < count:
            latencies[index].append(a.ms)
    return [percentile(values, 99) if values else math.inf for values in latencies]


def recovery(answers: list[Answer], start: float, end: float, capacity_p99: float) -> dict:
    """How the service came back after the overload (``start``: its end)."""
    ordered = sorted(answers, key=lambda a: a.sent)
    first = ordered[0]
    first_ok = min((a for a in ordered if a.status == 200), key=lambda a: a.done, default=None)
    bound = RECOVERY_P99_FACTOR * capacity_p99
    windows = p99_windows(answers, start, end)
    above = [i for i, p99 in enumerate(windows) if p99 > bound]
    if not above:
        back = 0.0
    elif above[-1] < len(windows) - 1:
        back = (above[-1] + 1) * WINDOW_S  # the end of the last window above the bound
    else:
        back = None  # not back by the end of the recovery phase
    return {
        "first_request": {"status": first.status, "latency_ms": first.ms,
                          "sent_after_s": first.sent - start},
        "first_200": None if first_ok is None else {
            "answered_after_s": first_ok.done - start, "latency_ms": first_ok.ms},
        "p99_bound_ms": bound, "p99_back_after_s": back,
        "window_p99_ms": [None if math.isinf(p99) else p99 for p99 in windows],
    }


def budget_figures(answers: list[Answer]) -> dict:
    """The share answered 200, the share of 200s within the budget, the N picked."""
    ok = [a for a in answers if a.status == 200]
    choices = [choice for a in ok for choice in a.picked or []]
    return {
        "share_200": len(ok) / max(1, len(answers)),
        "share_200_within_budget": sum(a.ms <= BUDGET_MS for a in ok) / max(1, len(ok)),
        "n_samples_picked": {str(n): count for n, count in
                             sorted(Counter(n for n, _ in choices).items())},
        "budget_limited_share": sum(limited for _, limited in choices) / max(1, len(choices)),
    }


def timeline(answers: list[Answer], phases: list[dict], t0: float,
             cpu: CpuSampler) -> list[dict]:
    """Per 1 s window of each phase: HTTP answers and 200s per second by answer time;
    requests per status class and the p99 of the 200s (big requests left out) by send
    time; the CPU cores this client and the server used."""
    rows = []
    for phase in phases:
        start, end = t0 + phase["start_s"], t0 + phase["end_s"]
        inside = [a for a in answers if start <= a.sent < end]
        p99s = p99_windows([a for a in inside if a.kind != "big"], start, end)
        sent = [Counter() for _ in p99s]
        for a in inside:
            sent[min(int((a.sent - start) / WINDOW_S), len(p99s) - 1)][
                status_class(a.status)] += 1
        served = [Counter() for _ in p99s]
        for a in answers:
            if start <= a.done < end and a.status > 0:
                served[min(int((a.done - start) / WINDOW_S), len(p99s) - 1)].update(
                    ["answered", *(["200"] if a.status == 200 else [])])
        rows += [{"t_s": phase["start_s"] + i * WINDOW_S, "phase": phase["name"],
                  "answered_per_s": done["answered"] / WINDOW_S,
                  "goodput_per_s": done["200"] / WINDOW_S,
                  **dict(zip(("client_cpu_cores", "server_cpu_cores"), map(nan_none, cpu.cores(
                      start + i * WINDOW_S, min(end, start + (i + 1) * WINDOW_S))), strict=True)),
                  "p99_ms": None if math.isinf(p99) else p99,
                  **{name: count.get(name, 0) for name in CLASSES}}
                 for i, (p99, count, done) in enumerate(zip(p99s, sent, served, strict=True))]
    return rows


def nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value
