"""The processes of a server under measurement, as psutil sees them on this machine:
which they are (by the port they listen on), the worker's memory, and the CPU time the
server and this client use over a run.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np


def server_tree(port: int) -> list:
    """The processes of the server listening on ``port`` (psutil), or [] when they
    cannot be read."""
    import psutil  # a dependency of BentoML's

    try:
        pids = {c.pid for c in psutil.net_connections("tcp")
                if c.pid and c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        tree = set()
        for pid in pids:
            root = psutil.Process(pid)
            while root.parent() and "bentoml" in " ".join(root.parent().cmdline()):
                root = root.parent()
            tree |= {root, *root.children(recursive=True)}
        return sorted(tree, key=lambda process: process.pid)
    except (OSError, psutil.Error):
        return []


def worker_rss_mb(tree: list) -> float | None:
    """VmRSS of the largest process of the server: its worker."""
    import psutil

    sizes = []
    for process in tree:
        try:
            sizes.append(process.memory_info().rss / 2**20)
        except psutil.Error:
            pass
    return max(sizes, default=None)


class CpuSampler(threading.Thread):
    """Every 0.5 s: (monotonic s, this process's CPU s, the server's CPU s or nan)."""

    def __init__(self, tree: list) -> None:
        super().__init__(daemon=True)
        self.tree, self.samples, self.stopping = tree, [], threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.sample()

    def sample(self) -> None:
        import psutil

        try:
            server = sum(sum(p.cpu_times()[:2]) for p in self.tree) if self.tree else math.nan
        except psutil.Error:
            server = math.nan
        self.samples.append((time.monotonic(), time.process_time(), server))

    def cores(self, start: float, end: float) -> tuple[float, float]:
        """(this client's, the server's) mean CPU use from ``start`` to ``end``, in cores."""
        t, client, server = np.array(sorted(self.samples)).T
        return tuple(float(np.diff(np.interp([start, end], t, used))[0] / (end - start))
                     for used in (client, server))
