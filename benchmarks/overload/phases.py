"""The overload benchmark's phases on one time line (capacity, overload and recovery, big
requests beside small ones, latency budget), the warm-up before them and the request
bodies they send.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import numpy as np

from benchmarks.load_client import request_bytes
from benchmarks.overload.figures import (
    BUDGET_MS,
    budget_figures,
    nan_none,
    recovery,
    status_class,
    summary,
)
from benchmarks.overload.loads import Answer, Load, OpenLoop, closed_loop, run
from benchmarks.overload.report import fmt, nonzero, seconds_or_never, times
from benchmarks.server_processes import CpuSampler
from training.data import load_dataset

RECOVERY_RATE = 0.5  # x capacity, after the overload
SMALL_CLIENTS, BIG_CLIENTS = 4, 2
BIG_INSTANCES, BIG_SAMPLES = 64, 1000


def metadata(url: str) -> dict:
    """The service's /metadata, with the fields this benchmark reads."""
    request = urllib.request.Request(f"{url}/metadata", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            meta = json.load(response)
    except OSError as error:
        raise RuntimeError(f"{url}/metadata: {getattr(error, 'reason', error)}") from None
    service = meta.get("service") or {}
    missing = [*({"model", "input_shape", "value_range"} - meta.keys()),
               *({"batch_max_latency_ms", "max_instances", "max_samples"} - service.keys())]
    if missing:
        raise RuntimeError(f"{url}/metadata lacks {', '.join(sorted(missing))}")
    return meta


def images(meta: dict, count: int = 256) -> tuple[np.ndarray, str]:
    """Test images of the served model's dataset, or random values in its range."""
    shape = tuple(meta["input_shape"])
    try:

        x = load_dataset(meta["dataset"]).x_test[:count]
        if x.shape[1:] == shape:
            return x, f"{meta['dataset']} test split"
    except Exception:  # noqa: BLE001 - any dataset trouble: random values do
        pass
    low, high = meta["value_range"]
    rng = np.random.default_rng(0)
    return rng.uniform(low, high, (count, *shape)).round(2), "random values in range"


def requests(path: str, bodies: list[dict]) -> list[bytes]:
    return [request_bytes(path, json.dumps(body).encode()) for body in bodies]


def payloads(x: np.ndarray, meta: dict, n_samples: int) -> dict[str, list[bytes]]:
    service = meta["service"]
    size = min(BIG_INSTANCES, service["max_instances"], len(x))
    samples = min(BIG_SAMPLES, service["max_samples"])
    return {
        "batched": requests("/predict_batched", [
            {"items": [{"instance": image.tolist(), "n_samples": n_samples}]} for image in x]),
        "small": requests("/predict", [
            {"instances": [image.tolist()], "n_samples": n_samples} for image in x]),
        "big": requests("/predict", [
            {"instances": x[i : i + size].tolist(), "n_samples": samples}
            for i in range(0, len(x) - size + 1, size)]),
        "budget": requests("/predict_batched", [
            {"items": [{"instance": image.tolist(), "latency_budget_ms": BUDGET_MS}]}
            for image in x]),
    }


class Run:
    """The phases on one time line: answers, phase spans and results."""

    def __init__(self, address: tuple[str, int], args, bodies: dict[str, list[bytes]],
                 cpu: CpuSampler) -> None:
        self.address, self.args, self.bodies, self.cpu = address, args, bodies, cpu
        self.t0 = time.monotonic()
        self.answers: list[Answer] = []
        self.phases: list[dict] = []
        self.results: dict = {}

    def closed(self, name: str, loads: list[Load], seconds: float) -> list[Answer]:
        start = time.monotonic()
        got = run(closed_loop(self.address, loads, seconds))
        self.record(name, start, start + seconds, got)
        return got

    def record(self, name: str, start: float, end: float, got: list[Answer]) -> None:
        self.answers += got
        self.cpu.sample()
        client, server = self.cpu.cores(start, end)
        self.phases.append({"name": name, "start_s": start - self.t0, "end_s": end - self.t0,
                            "client_cpu_cores": client, "server_cpu_cores": nan_none(server)})
        print(f"  {name}: CPU cores used: this client {client:.2f}, the server "
              f"{fmt(nan_none(server), 2)}", flush=True)

    def summary(self, got: list[Answer], kind: str | None = None) -> dict:
        """The summary of the answers of ``kind`` (default: all) of the last phase."""
        phase = self.phases[-1]
        return summary([a for a in got if kind in (None, a.kind)],
                       self.t0 + phase["start_s"], self.t0 + phase["end_s"])

    def capacity(self) -> None:
        seconds = self.args.capacity_seconds
        print(f"capacity: {self.args.clients} clients on /predict_batched for {seconds:g} s",
              flush=True)
        got = self.closed("capacity", [Load("capacity", self.bodies["batched"],
                                            self.args.clients)], seconds)
        self.results["capacity"] = row = self.summary(got)
        if not row["goodput_rps"]:
            raise RuntimeError(f"the capacity phase got no 200 answer: {nonzero(row)}")
        print(f"  capacity {row['goodput_rps']:.0f} req/s, p50 {fmt(row['p50_ms'])} ms, "
              f"p99 {fmt(row['p99_ms'])} ms, statuses {nonzero(row)}", flush=True)

    def overload(self) -> None:
        capacity = self.results["capacity"]["goodput_rps"]
        rate, low = self.args.overload * capacity, RECOVERY_RATE * capacity
        over, rest = self.args.overload_seconds, self.args.recovery_seconds
        print(f"overload: {rate:.0f} req/s for {over:g} s, then {low:.0f} req/s for {rest:g} s "
              "(open loop)", flush=True)
        start, loop = time.monotonic(), OpenLoop(self.address, self.bodies["batched"])
        got = run(loop.run([("overload", rate, over), ("recovery", low, rest)]))
        self.record("overload", start, start + over,
                    [a for a in got if a.kind == "overload"])
        loaded = self.summary(got, "overload")
        loaded.update(rate_rps=rate, goodput_share=loaded["goodput_rps"] / capacity)
        self.record("recovery", start + over, start + over + rest,
                    [a for a in got if a.kind == "recovery"])
        after = self.summary(got, "recovery")
        after.update(recovery([a for a in got if a.kind == "recovery"], start + over,
                              start + over + rest, self.results["capacity"]["p99_ms"]))
        self.results["overload"], self.results["recovery"] = loaded, after
        print(f"  overload goodput {loaded['goodput_rps']:.0f} req/s "
              f"({loaded['goodput_share']:.0%} of capacity), p99 {fmt(loaded['p99_ms'])} ms, "
              f"statuses {nonzero(loaded)}, late {loaded['late']} (send lag p99 "
              f"{fmt(loaded['send_lag_p99_ms'])} ms)", flush=True)
        print(f"  recovery: first request {after['first_request']['status']} in "
              f"{after['first_request']['latency_ms']:.1f} ms, p99 back after "
              f"{seconds_or_never(after['p99_back_after_s'])}, statuses {nonzero(after)}",
              flush=True)

    def big(self) -> None:
        seconds, small = self.args.capacity_seconds, self.bodies["small"]
        print(f"big beside small: {SMALL_CLIENTS} small clients alone, then beside "
              f"{BIG_CLIENTS} big ones, {seconds:g} s each", flush=True)
        rows = {"idle": self.summary(self.closed("idle", [Load("idle", small, SMALL_CLIENTS)],
                                                 seconds))}
        both = self.closed("big beside small", [
            Load("small", small, SMALL_CLIENTS),
            Load("big", self.bodies["big"], BIG_CLIENTS, backoff=True)], seconds)
        rows.update(small=self.summary(both, "small"), big=self.summary(both, "big"))
        idle_p99, small_p99 = rows["idle"]["p99_ms"], rows["small"]["p99_ms"]
        rows["p99_ratio"] = small_p99 / idle_p99 if idle_p99 and small_p99 else None
        self.results["big"] = rows
        print(f"  small p99 alone {fmt(idle_p99)} ms, beside big {fmt(small_p99)} ms "
              f"({times(rows['p99_ratio'])}); big p50 {fmt(rows['big']['p50_ms'])} ms, "
              f"statuses {nonzero(rows['big'])}", flush=True)

    def budget(self) -> None:
        seconds = self.args.capacity_seconds
        print(f"budget: {self.args.clients} clients, latency_budget_ms {BUDGET_MS:g}, "
              f"{seconds:g} s", flush=True)
        got = self.closed("budget", [Load("budget", self.bodies["budget"], self.args.clients,
                                          parse=True)], seconds)
        self.results["budget"] = row = self.summary(got) | budget_figures(got)
        print(f"  {row['share_200']:.1%} answered 200, {row['share_200_within_budget']:.1%} of "
              f"them within {BUDGET_MS:g} ms; N picked {row['n_samples_picked']}, budget "
              f"limited {row['budget_limited_share']:.0%}; statuses {nonzero(row)}", flush=True)


def warm(address: tuple[str, int], bodies: dict[str, list[bytes]], chosen: set[str],
         clients: int) -> None:
    """Every path and program the chosen phases use, before anything is measured."""
    loads = []
    if chosen & {"capacity", "overload"}:
        loads.append(Load("warm", bodies["batched"], clients))
    if "big" in chosen:
        loads += [Load("warm", bodies["small"], SMALL_CLIENTS), Load("warm", bodies["big"], 1)]
    if "budget" in chosen:
        loads.append(Load("warm", bodies["budget"], clients))
    for load in loads:
        got = run(closed_loop(address, [load], 3.0))
        if not any(a.status == 200 for a in got):
            statuses = Counter(status_class(a.status) for a in got)
            raise RuntimeError(f"warm-up got no 200 answer: {dict(statuses)}")
