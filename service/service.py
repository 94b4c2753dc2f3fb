"""The BentoML service: every prediction with N-sample MC dropout and a risk flag.

    bentoml serve            # from the repository root (bentofile.yaml names this)

The model (``UQ_MODEL``, default ``uq-classifier:latest``) is loaded in the
worker, in the background: TensorFlow is imported there, never in the CLI
process, and ``/readyz`` answers 503 until the model is ready. Each route
resolves N, calls the predictor and records metrics around the call; the
metrics hand the predictions on to monitoring (drift, the prediction log:
service/monitoring.py). Every prediction carries a feedback token that
``/feedback`` redeems with a late label (service/feedback.py).
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
from bentoml import get_current_service  # once: bentoml resolves its names on each access
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import Field, TypeAdapter

from artifacts.cards import ModelCard
from artifacts.inputs import InputSpec, parse_image
from artifacts.store import read_card
from service import adapter, metrics, request_ids
from service.door import Door
from service.feedback import Desk, Rejected, ReplayMemory, Signer
from service.generation import Sampler
from service.latency import LoopLag
from service.middleware import ServiceMiddleware
from service.monitoring import Monitoring
from service.oip.app import ENDPOINT as OIP_ENDPOINT
from service.oip.app import create_app as create_oip_app
from service.scheduler import Overloaded, Scheduler, Work
from service.schemas import (
    AUTO,
    MAX_RETURNED_SAMPLES,
    FeedbackBody,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    NSamplesOrAuto,
    Prediction,
    PredictResponse,
    SampleChoice,
    Seed,
    request_schemas,
)
from service.settings import settings
from service.webui import create_app as create_ui_app

logger = logging.getLogger(__name__)

#: Seconds before BentoML answers 504. BentoML keeps every request's context
#: alive this long (its timer is never cancelled), so it is short: large
#: requests (64 instances x 1000 samples) take a second or two.
REQUEST_TIMEOUT_SECONDS = 20

#: Middle-generation collections between full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 1000
#: Allocations (less deallocations) between young collections (CPython's default is 700).
YOUNG_COLLECTION_EVERY = 10_000

#: The output of /predict_batched, serialized by pydantic (adapter.json_list_response).
PREDICTIONS = TypeAdapter(list[Prediction])

API_ROUTES = ("predict", "predict_batched", "predict_image", "metadata", "generate",
              "feedback", "drift")


def _served_card() -> ModelCard:
    """The served model's card; stops start-up, in one line, when it cannot be served
    as configured: a card without per-N calibration, a UQ_DEFAULT_SAMPLES it has no
    calibration for, or a UQ_MAX_AUTO_SAMPLES other than the cap its "auto" was
    calibrated with."""
    card = read_card(bentoml.models.get(settings.model))
    auto = card.auto_calibration
    if settings.default_samples == "auto" and auto is None:
        raise ValueError(
            f'UQ_DEFAULT_SAMPLES=auto needs a card calibrated for "auto", and {settings.model}\'s '
            f"is not: recalibrate with uq-calibrate --model {settings.model}"
        )
    if settings.max_auto_samples and settings.max_auto_samples != getattr(
            auto, "max_samples", settings.max_auto_samples):
        raise ValueError(
            f"UQ_MAX_AUTO_SAMPLES={settings.max_auto_samples}, but the \"auto\" of "
            f"{settings.model} was calibrated with at most {auto.max_samples} samples: unset it, "
            f"or recalibrate with uq-calibrate --max-auto-samples {settings.max_auto_samples}"
        )
    if settings.default_samples not in (None, "auto", *card.calibrated_n_samples):
        raise ValueError(
            f"UQ_DEFAULT_SAMPLES={settings.default_samples} is not a calibrated N of "
            f"{settings.model} ({', '.join(map(str, card.calibrated_n_samples))}); pick one "
            "of these, or recalibrate with uq-calibrate --samples"
        )
    return card


_SERVED_CARD = _served_card()
#: The bodies that carry instances, checked against the served card's input spec and
#: described by it in the OpenAPI document.
PredictRequest, BatchItem = request_schemas(
    InputSpec(tuple(_SERVED_CARD.input_shape), tuple(_SERVED_CARD.value_range)))


class _MiddlewareOutside(bentoml.Service):
    """BentoML's service with the middleware (service/middleware.py) around BentoML's
    whole app, not among its middlewares: a request the middleware answers itself (a
    429 from the door under overload, 413, 415, 503) then costs none of BentoML's per
    request metrics, tracing and timeout bookkeeping (benchmarks/refusal_cost.py: 177 us
    of CPU per refusal inside BentoML's stack, 90 us outside it). BentoML's own request
    metrics and access log count only the requests that reach its app;
    ``uq_requests_total`` counts all."""

    def to_asgi(self, is_main: bool = True) -> Any:
        return ServiceMiddleware(super().to_asgi(is_main),
                                 max_body_bytes=settings.max_body_bytes,
                                 service=get_current_service)


@bentoml.service(
    service_class=_MiddlewareOutside,
    workers=1,
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    logging={"access": {"enabled": settings.access_log}},
    # BentoML wraps every request in OpenTelemetry spans that nothing exports unless
    # tracing is configured: 20% of a /predict_batched request's CPU here.
    tracing={"excluded_urls": [] if settings.tracing else [*API_ROUTES, "v2/"]},
)
class UQService:
    model_ref = bentoml.models.BentoModel(settings.model)
    if settings.generator:
        generator_ref = bentoml.models.BentoModel(settings.generator)

    def __init__(self) -> None:
        self.predictor = None
        self.scheduler = None
        self.sampler = None
        self.monitoring = None
        self.feedback_desk = None
        #: prediction requests in flight, refused past a bound (the middleware asks it)
        self.door = Door(settings.batch_max_latency_ms / 1000)
        #: the event loop's lag: what a request waited before the middleware first saw it
        self.lag = LoopLag()
        adapter.keep_api_wrappers(self, API_ROUTES)
        threading.Thread(target=self._load, name="uq-model-loader", daemon=True).start()

    def _load(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
        from service.predictor import Predictor  # imports TensorFlow: worker only

        try:
            predictor = Predictor.load(
                self.model_ref, settings.default_samples, warm_up_batch=settings.batch_max_size,
                signer=_feedback_signer,
            )
            if settings.generator:
                self.sampler = Sampler.load(self.generator_ref, predictor.spec)
        except Exception:
            logger.exception("could not load the models; /readyz stays 503")
            return
        self._start_monitoring(predictor)
        self.scheduler = Scheduler(
            predictor, max_rows=settings.batch_max_rows, max_instances=settings.batch_max_size,
            max_queued_rows=settings.max_queued_rows,
            max_latency=settings.batch_max_latency_ms / 1000,
            crowd=self.door.crowd, lag=self.lag,
        )
        _settle_garbage_collector()
        self.predictor = predictor

    def _start_monitoring(self, predictor) -> None:
        """Feedback tokens on every prediction, the desk that redeems them, drift and the
        prediction log."""
        card = predictor.card
        self.feedback_desk = Desk(
            predictor.signer,
            ReplayMemory(settings.feedback_replay_memory, settings.feedback_max_age_hours * 3600),
            card.class_names)
        self.monitoring = Monitoring(card, predictor.tag, log_predictions=settings.log_predictions,
                                     log_inputs=settings.log_inputs)

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def settle_metrics(self) -> None:
        """Record every prediction answered so far in the metrics (before /metrics
        answers: monitoring records them in the background)."""
        if self.monitoring is not None:
            self.monitoring.flush()

    def work(
        self, x: np.ndarray, choice: SampleChoice | None = None, *, seed: int | None = None,
        risk_threshold: float | None = None, return_samples: bool = False,
    ) -> Work:
        """The engine work of ``x`` ``[batch, *input_shape]``: N as the request chose it,
        or the default; with ``latency_budget_ms`` and no N, the calibrated N (at least
        ``min_samples``) the scheduler may pick from."""
        arrived = request_ids.started()
        choice = choice or SampleChoice()
        if choice.n_samples == AUTO and self.predictor.auto is None:
            raise adapter.BadRequest('n_samples: "auto" needs a model card calibrated for it; '
                                     "recalibrate with uq-calibrate --model TAG, or give an "
                                     "integer")
        n_samples, choices = choice.n_samples, ()
        minimum = choice.min_samples or 1
        most = MAX_RETURNED_SAMPLES if return_samples else settings.max_samples
        if n_samples is None and choice.latency_budget_ms is None:
            n_samples = self.predictor.default_request_samples
            if n_samples != AUTO and n_samples < minimum:
                n_samples = minimum
        elif n_samples is None:
            calibrated = [n for n in self.predictor.card.calibrated_n_samples
                          if minimum <= n <= most]
            choices = tuple(sorted({*calibrated, minimum}, reverse=True))
        drawn = minimum if n_samples is None else self.predictor.most_samples(n_samples)
        if return_samples and drawn > MAX_RETURNED_SAMPLES:  # N, or the least a budget picks
            raise adapter.BadRequest(
                f"return_samples: at most {MAX_RETURNED_SAMPLES} samples can be returned, "
                f"n_samples is {n_samples or minimum}"
            )
        deadline = (arrived + choice.latency_budget_ms / 1000
                    if choice.latency_budget_ms is not None else None)
        return Work(x, n_samples, choices, deadline, seed, risk_threshold, return_samples,
                    arrived=arrived)

    async def scheduled(self, endpoint: str, works: list[Work]) -> list[list[Prediction]]:
        """The predictions of each work, drawn by the scheduler, handed to monitoring (and
        so to the metrics); raises adapter.TooManyRequests when it refuses them."""
        try:
            results = await self.scheduler.run(works)
        except Overloaded as overloaded:
            raise adapter.TooManyRequests(overloaded.message, overloaded.retry_after) from None
        for work, predictions in zip(works, results, strict=True):
            if work.budget_limited:
                for prediction in predictions:
                    prediction.budget_limited = True
        self.monitoring.observe(endpoint, [p for predictions in results for p in predictions],
                                max(work.engine_seconds for work in works),
                                [work.x for work in works])
        return results

    @bentoml.api(route="/predict")
    @adapter.answers_service_errors
    async def predict(self, request: PredictRequest, /) -> PredictResponse:
        """MC dropout predictions for a list of instances (raw pixels, flat or shaped)."""
        work = self.work(request.instances, request, seed=request.seed,
                         risk_threshold=request.risk_threshold,
                         return_samples=request.return_samples)
        [predictions] = await self.scheduled("predict", [work])
        return PredictResponse(request_id=request_ids.current_or_new(), model=self.predictor.tag,
                               n_samples=work.n_samples, predictions=predictions)

    @bentoml.api(route="/predict_batched")
    @adapter.answers_service_errors
    async def predict_batched(
        self,
        items: Annotated[list[BatchItem], Field(min_length=1, max_length=settings.max_instances)],
    ) -> list[Prediction]:
        """One prediction per item, in order; each item chooses its own N. Items of every
        request share engine calls (service/scheduler.py), whatever their N."""
        works = []
        for index, item in enumerate(items):
            try:
                works.append(self.work(item.instance[None], item,
                                       return_samples=item.return_samples))
            except adapter.BadRequest as error:
                raise adapter.BadRequest(f"items.{index}.{error.message}") from None
        results = await self.scheduled("predict_batched", works)
        return adapter.json_list_response(PREDICTIONS, [predictions[0] for predictions in results])

    @bentoml.api(route="/predict_image")
    @adapter.answers_service_errors
    async def predict_image(
        self,
        image: Annotated[Path, ContentType("image/*")],
        n_samples: NSamplesOrAuto | None = None,
        seed: Seed | None = None,
        return_samples: bool = False,
    ) -> PredictResponse:
        """A PNG or JPEG upload (multipart field ``image``), read at the card's
        ``image_shape`` (artifacts.inputs.parse_image); 400 for a model without one."""
        try:
            x = parse_image(str(image), self.predictor.spec)
        except ValueError as error:
            raise adapter.BadRequest(f"image: {error}") from None
        work = self.work(x[None], SampleChoice(n_samples=n_samples), seed=seed,
                         return_samples=return_samples)
        [predictions] = await self.scheduled("predict_image", [work])
        return PredictResponse(request_id=request_ids.current_or_new(), model=self.predictor.tag,
                               n_samples=work.n_samples, predictions=predictions)

    @bentoml.api(route="/generate")
    @adapter.answers_service_errors
    async def generate(self, request: GenerateRequest, /) -> GenerateResponse:
        """Images from the GAN generator (UQ_GENERATOR), each with the classifier's MC
        prediction; the same seed gives the same response."""
        if self.sampler is None:
            raise adapter.NotFound(
                "no generator is configured: set UQ_GENERATOR to a tag that uq-train-gan saved"
            )
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        images = await anyio.to_thread.run_sync(  # [count, *input_shape]
            self.sampler.images, request.count, seed)
        work = self.work(images, SampleChoice(n_samples=request.n_samples), seed=seed)
        [predictions] = await self.scheduled("generate", [work])
        return GenerateResponse.model_validate({
            "request_id": request_ids.current_or_new(),
            "generator": self.sampler.tag,
            "model": self.predictor.tag,
            "n_samples": work.n_samples,
            "seed": seed,
            "samples": [
                {"image": np.round(image, 3).tolist(), "prediction": prediction}
                for image, prediction in zip(images, predictions, strict=True)
            ],
        })

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """The model card, with the served tag, the generator's and the service's limits."""
        generator = (
            {"tag": self.sampler.tag, **self.sampler.card.model_dump(mode="json")}
            if self.sampler else None
        )
        card = self.predictor.card
        return {
            "request_id": request_ids.current_or_new(),
            "model": self.predictor.tag,
            "calibrated_n_samples": card.calibrated_n_samples,
            **card.model_dump(mode="json"),
            "generator": generator,
            "service": settings.model_dump(),
            "drift": self.monitoring.drift_state(),
        }

    @bentoml.api(route="/feedback")
    @adapter.answers_service_errors
    async def feedback(self, body: FeedbackBody, /) -> FeedbackResponse:
        """Late labels: ``{"token": <a prediction's feedback_token>, "label": <class index or
        name>}``, or a list of them; all are counted, or none (4xx naming each problem)."""
        try:
            judged = self.feedback_desk.receive(body.root)
        except Rejected as rejected:
            for problem in rejected.problems:
                metrics.FEEDBACK_REJECTED.labels(problem).inc()
            return adapter.error_response(rejected.status, rejected.message)
        for item in judged:
            reasons = "+".join(item.content.reasons) or "none"
            metrics.FEEDBACK.labels(str(item.correct).lower(), reasons,
                                    str(item.covered).lower()).inc()
        return FeedbackResponse(
            request_id=request_ids.current_or_new(), model=self.predictor.tag,
            accepted=len(judged),
            results=[{"prediction_id": item.content.prediction_id,
                      "n_samples": item.content.n_samples,
                      "predicted_label": item.content.label, "label": item.label,
                      "correct": item.correct, "covered": item.covered,
                      "reasons": item.content.reasons} for item in judged],
        )

    @bentoml.api(route="/drift")
    def drift(self) -> dict[str, Any]:
        """The drift detector's state (also under "drift" in /metadata)."""
        return {"request_id": request_ids.current_or_new(), "model": self.predictor.tag,
                **self.monitoring.drift_state()}


def _served_predictor() -> Any:
    """The predictor of the service this process serves (service.predictor.Predictor);
    None until it has loaded."""
    try:
        return get_current_service().predictor
    except BentoMLException:  # the service is not instantiated yet
        return None


async def _v2_predictions(
    x: np.ndarray, choice: SampleChoice, seed: int | None, risk_threshold: float | None
) -> tuple[list[Prediction], int | str]:
    """The Open Inference Protocol's predictions for ``x`` ``[batch, *input_shape]``, and
    the N they used ("auto": each row its own): through the scheduler (admission,
    batching, latency budgets) with metrics, as every route."""
    service = get_current_service()
    work = service.work(x, choice, seed=seed, risk_threshold=risk_threshold)
    [predictions] = await service.scheduled(OIP_ENDPOINT, [work])
    return predictions, work.n_samples


def _feedback_signer(tag: str, classes: int) -> Signer:
    """The signer of the served model's feedback tokens (UQ_FEEDBACK_KEY, else a key of
    this process)."""
    key = settings.feedback_key.get_secret_value() if settings.feedback_key else None
    return Signer(Signer.key_from(key), tag, classes, settings.feedback_max_age_hours * 3600)


def _settle_garbage_collector() -> None:
    """TensorFlow and Keras leave ~400k long-lived objects: a full collection took
    290 ms, stalling every request in flight. Freeze them out of the collector's
    sight, and make full collections rare: under load they came every 1.3 s and
    scanned the request contexts BentoML keeps for REQUEST_TIMEOUT_SECONDS."""
    gc.collect()
    gc.freeze()
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, FULL_COLLECTION_EVERY)


adapter.declare_json_outputs(UQService)
adapter.quiet_client_error_tracebacks()
adapter.skip_uvicorn_access_log()
# The Open Inference Protocol (KServe V2) under /v2/...: a Starlette app beside the
# APIs, since BentoML APIs are POST-only and take no path parameters.
adapter.mount_at_root(UQService, create_oip_app(_served_predictor, predict=_v2_predictions))
# The web page at /ui: static HTML, JS and CSS from service/ui/.
adapter.mount_at_root(UQService, create_ui_app())
