"""Replay the test split, then a shifted set, through HTTP and watch the drift alarm.

    python -m loadtest.drift_replay --serve --model uq-classifier:latest \\
        --output docs/results/http_drift.json
    python -m loadtest.drift_replay --host http://127.0.0.1:3000 --test-requests 10000

One image per ``POST /predict`` (the card's default N unless ``--n-samples``): first
``--test-requests`` images of the model's test split (cycled when it has fewer),
then up to ``--shifted-requests`` images of a shifted set (upscaled digits for 28 x
28 data, else Gaussian noise; training.ood), reading ``POST /drift`` after each
shifted request. The targets: no alarm over the test split, the alarm within
:data:`DETECTION_TARGET` shifted requests. The drift state is the replica's, so
the figures are exact on a server that serves nothing else (``--serve``). Only
loopback hosts are accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from loadtest.server import ServerError, add_service_options, against_service
from training.data import load_dataset
from training.ood import ood_sets

PROG = "python -m loadtest.drift_replay"
DETECTION_TARGET = 200


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_service_options(parser)
    parser.add_argument("--test-requests", type=int, default=10_000,
                        help="test-split requests, one image each (default: %(default)s)")
    parser.add_argument("--shifted-requests", type=int, default=400,
                        help="most shifted-set requests; the replay stops at the alarm "
                        "(default: %(default)s)")
    parser.add_argument("--n-samples", type=int, help="N of every request (default: the "
                        "card's default N)")
    parser.add_argument("--poll-every", type=int, default=100,
                        help="read /drift every this many test requests (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("reports/http_drift.json"))
    return parser


def drift_state(client) -> dict[str, Any]:
    response = client.post("/drift", json={})
    if response.status_code != 200:
        raise RuntimeError(f"/drift answered {response.status_code}: {response.text[:200]}")
    state = response.json()
    if not state.get("enabled"):
        raise RuntimeError(f"drift detection is off: {state.get('reason')}")
    return state


def predict_one(client, image: np.ndarray, n_samples: int | None) -> None:
    body = {"instances": [image.tolist()]}
    if n_samples:
        body["n_samples"] = n_samples
    response = client.post("/predict", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:200]}")


def replay(host: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=host, timeout=60) as client:
        card = client.post("/metadata", json={}).json()
        dataset = load_dataset(card["dataset"], card["training"].get("validation_fraction", 0.1),
                               card["training"].get("seed", 0))
        shifted_sets = ood_sets(dataset, rows=max(args.shifted_requests, 1))
        shifted_name = ("upscaled_digits" if "upscaled_digits" in shifted_sets
                        else "gaussian_noise")
        shifted = shifted_sets[shifted_name]
        start = drift_state(client)
        polls = []
        for request in range(args.test_requests):
            predict_one(client, dataset.x_test[request % len(dataset.x_test)], args.n_samples)
            if (request + 1) % args.poll_every == 0 or request + 1 == args.test_requests:
                state = drift_state(client)
                polls.append({"requests": request + 1, "scores": state["scores"],
                              "alarm": state["alarm"]})
        after_test = drift_state(client)
        false_alarms = after_test["alarms"] - start["alarms"]
        delay = None
        for request in range(min(args.shifted_requests, len(shifted))):
            predict_one(client, shifted[request], args.n_samples)
            state = drift_state(client)
            if state["alarms"] > after_test["alarms"]:
                delay = state["last_alarm_observed"] - after_test["observed"]
                break
    largest = max((value for poll in polls for value in poll["scores"].values()
                   if value is not None), default=None)
    report = {
        "model": card["model"],
        "n_samples": args.n_samples or card["default_n_samples"],
        "window": start["window"], "threshold": start["threshold"],
        "test_requests": args.test_requests,
        "observed_test": after_test["observed"] - start["observed"],
        "false_alarms": false_alarms,
        "largest_polled_statistic_on_test": largest,
        "shifted_set": shifted_name,
        "detection_delay_requests": delay,
        "targets": {"no_alarm_on_test": false_alarms == 0,
                    f"alarm_within_{DETECTION_TARGET}": delay is not None
                    and delay <= DETECTION_TARGET},
        "polls": polls,
    }
    print(f"{report['model']} N={report['n_samples']}: {false_alarms} alarms over "
          f"{args.test_requests} test requests (largest statistic polled {largest}, threshold "
          f"{report['threshold']}); {shifted_name}: alarm after {delay} requests", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # before the run: the tree it measures
    origin = provenance(None if argv is None else [PROG, *argv])
    if min(args.test_requests, args.shifted_requests, args.poll_every) < 1:
        return fail(PROG, "--test-requests, --shifted-requests and --poll-every must be >= 1")
    try:
        report = against_service(args.host, args.model, args.output.parent,
                                 lambda url: replay(url, args))
    except (ServerError, RuntimeError, ValueError) as error:
        return fail(PROG, str(error))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {**origin, **report}
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
