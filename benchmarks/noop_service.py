"""A BentoML service that predicts nothing: the service's routes, their request bodies
read as BentoML reads any JSON body, and a fixed answer. What a request costs BentoML
itself on this machine, the floor benchmarks.loop_cost compares the service with.

    bentoml serve benchmarks.noop_service:NoopService

Configured as service/service.py configures its service where that changes BentoML's
per-request work (one worker, no tracing spans, no access log, JSON outputs); the Open
Inference Protocol's infer route is a Starlette app mounted beside the APIs, as there.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

#: The answer of every route: the size of one prediction's JSON.
ANSWER = json.dumps({"answer": "fixed", "padding": "x" * 1500}).encode()


async def infer(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


@bentoml.service(workers=1, logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["predict", "predict_batched", "v2/"]})
class NoopService:
    @bentoml.api(route="/predict")
    async def predict(self, instances: list[Any], n_samples: int | str | None = None,
                      seed: int | None = None, risk_threshold: float | None = None,
                      return_samples: bool = False) -> dict[str, Any]:
        return Response(ANSWER, media_type="application/json")

    @bentoml.api(route="/predict_batched")
    async def predict_batched(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return Response(ANSWER, media_type="application/json")


NoopService.mount_asgi_app(Starlette(routes=[
    Route("/v2/models/{name}/infer", infer, methods=["POST"])]), path="/")
for _api in NoopService.apis.values():
    _api.output_spec.media_type = "application/json"
