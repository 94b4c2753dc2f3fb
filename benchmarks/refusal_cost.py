"""What saying no costs the server: its CPU per refusal, through HTTP.

    python -m benchmarks.refusal_cost --model uq-classifier:latest \\
        --output benchmarks/results/refusal_cost.json

Under overload the service refuses most requests, and every refusal takes event-loop
time from the requests it serves: goodput under 3x overload can only reach 90% of
capacity if a refusal costs well under a tenth of a served request. This measures it.

In each round (``--rounds``), ``--clients`` closed-loop keep-alive clients post a
one-image ``/predict_batched`` body for ``--seconds``:

1. to a real ``bentoml serve`` (loopback), with ``Content-Type: text/plain``: the
   service's middleware answers each with 415 after reading the body and before
   anything parses it, the same path as the door's 429 under overload (request id,
   readiness, content type, body, ``{"error"}`` answer, request count);
2. to a bare uvicorn app on the same event loop and HTTP parser (uvloop, httptools)
   that reads the body and answers 429 with a JSON body: the floor of a Python ASGI
   server on this machine.

The figure is the server's CPU seconds (its worker process) over the answers it gave.
The clients share the 2 cores; prints the medians over the rounds and every round.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from artifacts.store import stored_card
from benchmarks.bare_refusal import bare_server
from benchmarks.load_client import keep_alive_client, request_bytes
from benchmarks.server_processes import server_tree
from commandline.arguments import OneLineErrorParser, fail, positive_integer
from commandline.provenance import provenance
from loadtest.server import free_port, served
from training.data import load_dataset


def one_image_body(dataset: str) -> bytes:

    image = load_dataset(dataset).x_test[0].reshape(-1).astype(int).tolist()
    return json.dumps({"items": [{"instance": image, "n_samples": 30}]}).encode()


def cpu_per_answer(port: int, process, request: bytes, clients: int, seconds: float) -> dict:
    """Closed-loop clients for ``seconds``: answers, their statuses, the server's CPU."""
    statuses: list[int] = []
    stop = time.monotonic() + seconds

    async def run() -> None:
        await asyncio.gather(*(keep_alive_client(port, [request], 0, 1, stop, [], statuses)
                               for _ in range(clients)))

    times = process.cpu_times()
    started = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - started
    after = process.cpu_times()
    cpu = after.user + after.system - times.user - times.system
    return {"answers": len(statuses), "statuses": sorted(set(statuses)),
            "answers_per_s": len(statuses) / wall, "server_cores": cpu / wall,
            "cpu_us_per_answer": cpu / max(len(statuses), 1) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.refusal_cost",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest")
    parser.add_argument("--clients", type=positive_integer, default=32)
    parser.add_argument("--seconds", type=positive_integer, default=8)
    parser.add_argument("--rounds", type=positive_integer, default=3)
    parser.add_argument("--output", type=Path,
                        default=Path("benchmarks/results/refusal_cost.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    import psutil

    try:
        card = stored_card(args.model)
    except ValueError as error:
        return fail(parser.prog, str(error))
    body = one_image_body(card.dataset)
    service_request = request_bytes("/predict_batched", body, {"Content-Type": "text/plain"})
    bare_request = request_bytes("/predict_batched", body)
    rounds: list[dict] = []
    bare_port = free_port()
    bare = bare_server(bare_port)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with served(args.model, args.output.parent) as url:
            port = int(url.rsplit(":", 1)[1])
            worker = max(server_tree(port), key=lambda p: p.memory_info().rss)
            for number in range(args.rounds):
                figures = {
                    "service": cpu_per_answer(port, worker, service_request, args.clients,
                                              args.seconds),
                    "bare": cpu_per_answer(bare_port, psutil.Process(bare.pid), bare_request,
                                           args.clients, args.seconds),
                }
                rounds.append(figures)
                print(f"round {number + 1}: " + ", ".join(
                    f"{side} {f['cpu_us_per_answer']:.0f} us per answer "
                    f"({f['answers_per_s']:.0f}/s, {f['server_cores']:.2f} cores, "
                    f"statuses {f['statuses']})" for side, f in figures.items()), flush=True)
    finally:
        bare.terminate()
        bare.wait()
    medians = {side: statistics.median(r[side]["cpu_us_per_answer"] for r in rounds)
               for side in ("service", "bare")}
    print(f"\nmedian CPU per refusal: service {medians['service']:.0f} us, bare uvicorn "
          f"{medians['bare']:.0f} us")
    args.output.write_text(json.dumps({**origin, "model": args.model, "clients": args.clients,
                                       "seconds": args.seconds, "median_cpu_us": medians,
                                       "rounds": rounds}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
