"""A bare uvicorn app that reads each request's body and answers 429 with a JSON body and
Retry-After: the floor of what a refusal costs a Python ASGI server on this machine
(benchmarks.refusal_cost), and a server that refuses everything (the load client's tests).

    process = bare_server(port)   # a subprocess, listening on 127.0.0.1:port
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REFUSAL = json.dumps({"error": "the service is overloaded; retry later"}).encode()


async def bare_app(scope: dict, receive, send) -> None:
    """Read the body, answer 429 with a JSON body and Retry-After."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REFUSAL)).encode()), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": REFUSAL})


def bare_server(port: int) -> subprocess.Popen:
    """``bare_app`` under uvicorn (uvloop, httptools) on 127.0.0.1:``port``, in a
    subprocess; returns once it listens. The caller terminates it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.bare_refusal:bare_app", "--port",
         str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning"],
        cwd=Path(__file__).resolve().parents[1])
    import psutil

    deadline = time.monotonic() + 30
    while not any(c.laddr.port == port for c in psutil.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the bare uvicorn app did not start")
        time.sleep(0.2)
    return process
