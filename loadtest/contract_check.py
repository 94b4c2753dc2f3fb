"""Check a running service against its public contract: every route and option once,
a few bad requests, and the server's log.

    python -m loadtest.contract_check http://127.0.0.1:3000 --log serve.log

Sends the documented requests (``/predict`` with a fixed N, "auto", a latency budget,
``return_samples`` and a repeated seed; ``/predict_batched`` with mixed items;
``/predict_image`` with a PNG; ``/generate`` when a generator is configured;
``/metadata``, ``/feedback`` with a prediction's token, ``/drift``; the Open Inference
Protocol under ``/v2`` through tritonclient, JSON and binary tensors; ``GET /ui`` and its
script, style sheet and examples; ``/metrics``, ``/livez``, ``/readyz``, ``/docs.json``)
and bad requests that must get a 4xx ``{"error"}``. A 5xx, a wrong status, a missing
contract field or a ``Traceback`` in the log (``--log``) is one line on stdout each;
the exit code is then 1 (2 when the service cannot be reached at all). Works with any
served classifier: instances are made from the card's input shape and value range.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from commandline.arguments import OneLineErrorParser, fail
from loadtest.contract import missing_fields

PROG = "python -m loadtest.contract_check"
#: Metrics every serving process exports once it has answered the checks' requests
#: (uq_drift_score comes with the first full window of predictions: not checked).
METRICS = ("uq_requests_total", "uq_n_samples_bucket", "uq_engine_seconds_bucket",
           "uq_feedback_total", "uq_drift_threshold", "uq_drift_alarm")
#: The routes the OpenAPI document must list.
DOCUMENTED_ROUTES = ("/predict", "/predict_batched", "/predict_image", "/generate", "/metadata",
                     "/feedback", "/drift")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--log", type=Path,
                        help="the server's log, read after the requests for tracebacks")
    return parser


class Contract:
    """The checks' HTTP client and the failures they found, one line each."""

    def __init__(self, client) -> None:
        self.client = client
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.fail(message)
        return condition

    def call(self, method: str, path: str, status: int = 200, **request: Any):
        """The response to ``method path``, or None (and a failure) when its status is
        not ``status``."""
        response = self.client.request(method, path, **request)
        if response.status_code != status:
            self.fail(f"{method} {path}: answered {response.status_code}, expected {status}: "
                      f"{one_line(response.text)}")
            return None
        return response

    def prediction_body(self, path: str, body: Any, what: str) -> bool:
        """Whether a prediction answer carries the contract's fields (a failure if not)."""
        lacking = missing_fields(body, path)
        return self.expect(lacking is None, f"POST {path} ({what}): the answer lacks {lacking}")

    def refused(self, method: str, path: str, what: str, fragment: str, **request: Any) -> None:
        """``method path`` must answer a 4xx ``{"error"}`` whose message names ``fragment``."""
        response = self.client.request(method, path, **request)
        prefix = f"{method} {path} ({what})"
        if not 400 <= response.status_code < 500:
            self.fail(f"{prefix}: answered {response.status_code}, expected a 4xx: "
                      f"{one_line(response.text)}")
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and set(body) == {"error"}
                and isinstance(body["error"], str)):
            self.fail(f'{prefix}: the {response.status_code} answer is not {{"error": ...}}: '
                      f"{one_line(response.text)}")
        elif fragment not in body["error"]:
            self.fail(f"{prefix}: the error does not name {fragment!r}: {body['error']}")


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def instances(card: dict, count: int) -> np.ndarray:
    """``count`` valid instances ``[count, *input_shape]`` spread over the card's value range."""
    shape = tuple(card["input_shape"])
    low, high = card["value_range"]
    size = int(np.prod(shape))
    ramp = (np.arange(count * size).reshape(count, size) * 7 % 17) / 16
    return (low + ramp * (high - low)).reshape(count, *shape).astype(np.float32)


def png_of(card: dict) -> bytes:
    """A PNG the size of the model's input (a flat input of n*n values: n x n gray)."""
    from PIL import Image

    shape = tuple(card["input_shape"])
    if len(shape) == 1:
        side = int(round(np.sqrt(shape[0])))
        shape = (side, side)
    pixels = (np.arange(int(np.prod(shape))) * 37 % 256).astype(np.uint8).reshape(shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if shape[-1:] == (1,) else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def without_ids(body: Any) -> Any:
    """``body`` without what a seed does not repeat: request ids and feedback tokens."""
    if isinstance(body, dict):
        return {key: without_ids(value) for key, value in body.items()
                if key not in ("request_id", "feedback_token")}
    if isinstance(body, list):
        return [without_ids(value) for value in body]
    return body


def check_health(contract: Contract) -> None:
    for path in ("/livez", "/readyz"):
        contract.call("GET", path)
    response = contract.call("GET", "/docs.json")
    if response is not None:
        paths = response.json().get("paths", {})
        lacking = [route for route in DOCUMENTED_ROUTES if route not in paths]
        contract.expect(not lacking, f"GET /docs.json: lacks {', '.join(lacking)}")


def check_predict(contract: Contract, card: dict) -> list[dict]:
    """Every /predict option; returns the predictions of the plain request."""
    x = instances(card, 2).tolist()
    response = contract.call("POST", "/predict", json={"instances": x})
    if response is None:
        return []
    body = response.json()
    default = card["service"].get("default_samples") or card["default_n_samples"]
    if contract.prediction_body("/predict", body, "default N"):
        contract.expect(body["n_samples"] == default,
                        f"POST /predict: n_samples {body['n_samples']}, the default is {default}")
        contract.expect(response.headers.get("x-request-id") == body.get("request_id"),
                        "POST /predict: X-Request-ID differs from the body's request_id")
        contract.expect(all(p.get("feedback_token") for p in body["predictions"]),
                        "POST /predict: a prediction lacks its feedback_token")
    auto = contract.call("POST", "/predict", json={"instances": x, "n_samples": "auto"})
    if auto is not None and contract.prediction_body("/predict", auto.json(), '"auto"'):
        contract.expect(all(isinstance(p["n_samples"], int) for p in auto.json()["predictions"]),
                        'POST /predict ("auto"): a prediction does not say its own n_samples')
    budget = contract.call("POST", "/predict", json={
        "instances": x, "latency_budget_ms": 60000, "min_samples": 5})
    if budget is not None and contract.prediction_body("/predict", budget.json(), "budget"):
        contract.expect(all(p["n_samples"] >= 5 for p in budget.json()["predictions"]),
                        "POST /predict (latency_budget_ms): fewer samples than min_samples 5")
    check_samples_and_seed(contract, x)
    return body["predictions"] if missing_fields(body, "/predict") is None else []


def check_samples_and_seed(contract: Contract, x: list) -> None:
    request = {"instances": x, "n_samples": 6, "seed": 11, "return_samples": True}
    first, again = (contract.call("POST", "/predict", json=request) for _ in range(2))
    if first is None or again is None:
        return
    shapes = [np.shape(p.get("samples")) for p in first.json()["predictions"]]
    classes = len(first.json()["predictions"][0]["probabilities"])
    contract.expect(shapes == [(6, classes)] * len(x),
                    f"POST /predict (return_samples): samples shaped {shapes}, expected "
                    f"[6, {classes}] per prediction")
    contract.expect(without_ids(first.json()) == without_ids(again.json()),
                    "POST /predict (seed): the same seed gave different predictions")


def check_batched(contract: Contract, card: dict) -> None:
    x = instances(card, 4).tolist()
    items = [{"instance": x[0], "n_samples": 1}, {"instance": x[1], "n_samples": "auto"},
             {"instance": x[2], "n_samples": 3, "return_samples": True},
             {"instance": x[3], "latency_budget_ms": 60000, "min_samples": 2}]
    response = contract.call("POST", "/predict_batched", json={"items": items})
    if response is None:
        return
    body = response.json()
    if contract.prediction_body("/predict_batched", body, "mixed items"):
        used = [prediction["n_samples"] for prediction in body]
        contract.expect(len(used) == len(items) and used[0] == 1 and used[3] >= 2,
                        f"POST /predict_batched: n_samples {used} for items asking 1, "
                        '"auto", 3 and a budget with at least 2')
        contract.expect(len(body) == len(items) and len(body[2].get("samples") or []) == 3,
                        "POST /predict_batched: the item with return_samples lacks its 3 "
                        "samples")


def check_image(contract: Contract, card: dict) -> None:
    response = contract.call("POST", "/predict_image",
                             files={"image": ("digit.png", png_of(card), "image/png")},
                             data={"n_samples": "4", "seed": "2"})
    if response is not None and contract.prediction_body("/predict_image", response.json(),
                                                         "PNG"):
        contract.expect(len(response.json()["predictions"]) == 1,
                        "POST /predict_image: not exactly one prediction")


def check_generate(contract: Contract, card: dict) -> None:
    if not card.get("generator"):
        contract.refused("POST", "/generate", "no generator", "UQ_GENERATOR", json={"count": 1})
        return
    request = {"count": 2, "n_samples": 5, "seed": 3}
    first, again = (contract.call("POST", "/generate", json=request) for _ in range(2))
    if first is None or again is None:
        return
    body = first.json()
    samples = body.get("samples", [])
    contract.expect(len(samples) == 2, f"POST /generate: {len(samples)} samples, asked for 2")
    shapes = {np.shape(sample.get("image")) for sample in samples}
    contract.expect(shapes == {tuple(card["input_shape"])},
                    f"POST /generate: images shaped {shapes}, the input is {card['input_shape']}")
    contract.prediction_body("/predict_batched", [s.get("prediction", {}) for s in samples],
                             "/generate's predictions")
    contract.expect(without_ids(body) == without_ids(again.json()),
                    "POST /generate (seed): the same seed gave different samples")


def check_feedback_and_drift(contract: Contract, predictions: list[dict]) -> None:
    if predictions:
        first = predictions[0]
        response = contract.call("POST", "/feedback", json={"token": first["feedback_token"],
                                                            "label": first["label"]})
        if response is not None:
            contract.expect(response.json().get("accepted") == 1,
                            f"POST /feedback: accepted {response.json().get('accepted')}, not 1")
    response = contract.call("POST", "/drift", json={})
    if response is not None:
        lacking = {"request_id", "model", "enabled"} - response.json().keys()
        contract.expect(not lacking, f"POST /drift: the answer lacks {', '.join(sorted(lacking))}")


def check_open_inference(contract: Contract, card: dict, url: str) -> None:
    """/v2 through tritonclient: health, metadata, JSON and binary tensors that agree."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    name = card["model"].partition(":")[0]
    x = instances(card, 2)
    client = triton.InferenceServerClient(url=url.split("://", 1)[-1], network_timeout=120)
    try:
        contract.expect(client.is_server_ready() and client.is_model_ready(name),
                        f"/v2: the server or the model {name} is not ready")
        metadata = client.get_model_metadata(name)
        outputs = [output["name"] for output in metadata["outputs"]]
        answers = {}
        for binary in (False, True):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(name, [tensor], parameters={"seed": 4}, outputs=[
                triton.InferRequestedOutput(output, binary_data=binary) for output in outputs])
            answers[binary] = {output: result.as_numpy(output) for output in outputs}
        # a seed repeats every output but the feedback tokens, new in every answer
        differing = [output for output in outputs if output != "feedback_token"
                     and not np.array_equal(answers[False][output], answers[True][output])]
        contract.expect(not differing, f"/v2 infer: JSON and binary tensors differ in "
                        f"{', '.join(differing)}")
        for binary, answer in answers.items():
            tokens = answer.get("feedback_token")
            contract.expect(tokens is not None and len(tokens) == len(x) and all(tokens),
                            f"/v2 infer ({'binary' if binary else 'JSON'}): expected one "
                            "feedback_token per row")
    except InferenceServerException as error:
        contract.fail(f"/v2 (tritonclient): {one_line(str(error))}")
    finally:
        client.close()


def check_page(contract: Contract) -> None:
    """GET /ui, every file the page links, and every bundled example."""
    page = contract.call("GET", "/ui")
    if page is None:
        return
    linked = re.findall(r'(?:src|href)="(ui/[^"]+)"', page.text)
    contract.expect(bool(linked), "GET /ui: the page links no script or style sheet")
    for path in linked:
        contract.call("GET", "/" + path)
    examples = contract.call("GET", "/ui/examples/examples.json")
    for example in examples.json() if examples is not None else []:
        contract.call("GET", f"/ui/examples/{example['file']}")


def check_metrics(contract: Contract) -> None:
    response = contract.call("GET", "/metrics")
    if response is not None:
        lacking = [name for name in METRICS if name not in response.text]
        contract.expect(not lacking, f"GET /metrics: lacks {', '.join(lacking)}")


def check_refusals(contract: Contract, card: dict) -> None:
    name = card["model"].partition(":")[0]
    x = instances(card, 1).tolist()
    contract.refused("POST", "/predict", "too few values", "instance 0",
                     json={"instances": [[1, 2, 3]]})
    contract.refused("POST", "/predict", "no instances", "instances", json={})
    contract.refused("POST", "/predict", "n_samples 0", "n_samples",
                     json={"instances": x, "n_samples": 0})
    contract.refused("POST", "/predict", "not JSON", "JSON", content=b"{",
                     headers={"content-type": "application/json"})
    contract.refused("POST", "/predict_batched", "no items", "items", json={})
    contract.refused("POST", "/predict_image", "no image", "image", data={"n_samples": "3"},
                     files={"other": ("x.txt", b"x", "text/plain")})
    contract.refused("POST", "/feedback", "a forged token", "token",
                     json={"token": "!!", "label": 1})
    contract.refused("POST", f"/v2/models/{name}/infer", "a wrong shape", "shape", json={
        "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})


def check_log(contract: Contract, log: Path) -> None:
    """A failure per traceback in ``log``, with its exception (the first line after it
    that is not indented)."""
    lines = log.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines):
        if "Traceback" in line:
            raised = next((text for text in lines[number + 1:] if text and not text[0].isspace()),
                          "")
            contract.fail(f"{log}:{number + 1}: a Traceback in the server's log: {raised}")


def check(url: str, log: Path | None) -> list[str]:
    """The failures of the service at ``url`` (one line each; none: it keeps the contract)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        contract = Contract(client)
        response = contract.call("POST", "/metadata", json={})
        if response is None:
            return contract.failures
        card = response.json()
        check_health(contract)
        predictions = check_predict(contract, card)
        check_batched(contract, card)
        check_image(contract, card)
        check_generate(contract, card)
        check_refusals(contract, card)
        check_feedback_and_drift(contract, predictions)
        check_open_inference(contract, card, url)
        check_page(contract)
        check_metrics(contract)
    if log is not None:
        check_log(contract, log)
    return contract.failures


def main(argv: list[str] | None = None) -> int:
    import httpx

    args = build_parser().parse_args(argv)
    if args.log is not None and not args.log.is_file():
        return fail(PROG, f"--log {args.log}: no such file")
    try:
        failures = check(args.url.rstrip("/"), args.log)
    except httpx.TransportError as error:
        return fail(PROG, f"cannot reach {args.url}: {error}")
    for failure in failures:
        print(f"contract: {failure}")
    if failures:
        print(f"contract: FAILED: {len(failures)} failure(s) at {args.url}")
        return 1
    print(f"contract: {args.url} keeps the contract")
    return 0


if __name__ == "__main__":
    sys.exit(main())
