"""What a running service's /metrics say about a load: the N its predictions used.

    before = n_samples_histogram(url)
    ...  # the load
    used = histogram_change(before, n_samples_histogram(url))  # mean N, shares by bucket

Read by uq-loadtest and the benchmarks that load the service.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any


def n_samples_histogram(host: str) -> dict[str, float]:
    """The service's ``uq_n_samples`` histogram (samples per prediction): its count, sum
    and cumulative buckets by upper bound, from /metrics; empty when it cannot be read."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/metrics", timeout=30) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith(("uq_n_samples_count", "uq_n_samples_sum", "uq_n_samples_bucket")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def histogram_change(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the predictions of one run used: ``mean_n_samples`` and, per histogram bucket
    that holds any (by its upper bound), the share of predictions in it: N above the
    bucket below, up to this bound."""
    count = after.get("uq_n_samples_count", 0.0) - before.get("uq_n_samples_count", 0.0)
    if count <= 0:
        return {}
    total = after.get("uq_n_samples_sum", 0.0) - before.get("uq_n_samples_sum", 0.0)
    cumulative = sorted(
        (float(name.split('le="')[1].split('"')[0]), (value - before.get(name, 0.0)) / count)
        for name, value in after.items()
        if name.startswith("uq_n_samples_bucket") and 'le="+Inf"' not in name)
    shares, below = {}, 0.0
    for bound, share in cumulative:
        if share - below > 0:
            shares[f"{bound:g}"] = share - below
        below = share
    return {"mean_n_samples": total / count, "n_samples_shares": shares}
