"""Serving a stored model in a subprocess: ``served(model, log_dir)`` runs `bentoml serve`
on a free loopback port, waits until it is ready and stops it afterwards.

Used by uq-loadtest ``--serve``, the test run's real server and the service
benchmark. Problems come as ``ServerError``, one line each.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

REPOSITORY = Path(__file__).resolve().parents[1]


class ServerError(Exception):
    """The server exited at startup or was not ready in time (a one-line message)."""


@contextmanager
def served(model: str, log_dir: Path, service: str | None = None) -> Iterator[str]:
    """Run `bentoml serve` for ``model`` on a free loopback port; yields its URL.
    The server's output goes to ``log_dir / "serve.log"``. ``service``: another
    service to serve (``module:Class``, a benchmark's baseline) than bentofile.yaml's.

    The server gets a BENTOML_HOME of its own that shares the model store: every
    `bentoml serve` empties its home's Prometheus directory, which would blank
    /metrics of a service already running on the same home."""
    port = free_port()
    log_path = log_dir / ("serve.log" if service is None else f"serve-{service}.log")
    with tempfile.TemporaryDirectory(prefix="uq-serve-home-") as home, \
            open(log_path, "w") as log:
        store = bentoml_home() / "models"
        store.mkdir(parents=True, exist_ok=True)  # a dangling link would fail BentoML's makedirs
        os.symlink(store, Path(home) / "models")
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", *([service] if service else []),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPOSITORY, env={**os.environ, "UQ_MODEL": model, "BENTOML_HOME": home},
            stdout=log, stderr=subprocess.STDOUT, process_group=0,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log_path)
            yield url
        finally:
            _stop(process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bentoml_home() -> Path:
    """BentoML's home, as BentoML resolves it: ``$BENTOML_HOME`` or ~/bentoml."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    """Poll ``url``/readyz until it answers 200; raises ServerError with the last
    log line if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text().strip().splitlines()[-1:]
            raise ServerError(f"the service exited: {' '.join(tail)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerError(f"the service was not ready within {timeout:.0f} s (see {log_path})")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and its workers), SIGKILL if it
    lingers; a server that has already exited is fine."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def check_loopback(url: str) -> None:
    """Raises ServerError unless ``url`` is an http URL on loopback: load goes nowhere else."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ServerError(f"--host must be an http URL, got {url!r}")
    host = parsed.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ServerError(f"--host must be on loopback (127.0.0.1, ::1, localhost), got {host}")


def against_service(host: str | None, model: str, log_dir: Path, work):
    """``work(url)`` against ``host`` (which must be on loopback), or against ``model``
    served for the call when ``host`` is None; returns what ``work`` returns."""
    if host:
        check_loopback(host)
        return work(host)
    log_dir.mkdir(parents=True, exist_ok=True)
    with served(model, log_dir) as url:
        return work(url)


def add_service_options(parser) -> None:
    """``--host URL`` or ``--serve`` (with ``--model``): where a check sends its requests."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--host", help="service URL on loopback")
    source.add_argument("--serve", action="store_true", help="serve --model for the run")
    parser.add_argument("--model", default="uq-classifier:latest",
                        help="tag to serve with --serve (default: %(default)s)")
