"""The BentoML service: every prediction with N-sample MC dropout and a risk flag.

    bentoml serve            # from the repository root (bentofile.yaml names this)

The model (``UQ_MODEL``, default ``uq-classifier:latest``) is loaded in the
worker, in the background: TensorFlow is imported there, never in the CLI
process, and ``/readyz`` answers 503 until the model is ready.
"""

from __future__ import annotations

import functools
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
from bentoml.validators import ContentType
from pydantic import Field

from service.middleware import ServiceMiddleware, quiet_client_error_tracebacks
from service.schemas import (
    ACTIVE_INPUT,
    BatchItem,
    GenerateRequest,
    GenerateResponse,
    NSamples,
    Prediction,
    PredictRequest,
    PredictResponse,
    Seed,
    parse_image,
)
from service.settings import settings

logger = logging.getLogger(__name__)


API_ROUTES = ("predict", "predict_batched", "predict_image", "metadata", "generate")

#: /predict calls of up to this many rows (instances x samples, a few ms) run on
#: the event loop; larger ones in a worker thread.
INLINE_ROWS = 256

#: Seconds before BentoML answers 504. BentoML keeps every request's context
#: alive this long (its timer is never cancelled), so it is short: large
#: requests (64 instances x 1000 samples) take a second or two.
REQUEST_TIMEOUT_SECONDS = 20

#: Middle-generation collections between full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 1000


@bentoml.service(
    workers=1,
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    logging={"access": {"enabled": settings.access_log}},
    # BentoML wraps every request in OpenTelemetry spans that nothing exports unless
    # tracing is configured: 20% of a /predict_batched request's CPU here.
    tracing={"excluded_urls": [] if settings.tracing else list(API_ROUTES)},
)
class UQService:
    model_ref = bentoml.models.BentoModel(settings.model)
    if settings.generator:
        generator_ref = bentoml.models.BentoModel(settings.generator)

    def __init__(self) -> None:
        self.predictor = None
        self.sampler = None
        # BentoML looks an API method up on this instance twice per request, and
        # each lookup wraps it anew (inspect.signature included): a tenth of the
        # event loop's time under load. The wrapper never changes, so keep it.
        for name in API_ROUTES:
            setattr(self, name, getattr(self, name))
        threading.Thread(target=self._load, name="uq-model-loader", daemon=True).start()

    def _load(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
        from service.generation import Sampler
        from service.predictor import Predictor  # imports TensorFlow: worker only

        try:
            predictor = Predictor.load(
                self.model_ref, settings.default_samples, warm_up_batch=settings.batch_max_size
            )
            if settings.generator:
                self.sampler = Sampler.load(self.generator_ref, predictor.spec)
        except Exception:
            logger.exception("could not load the models; /readyz stays 503")
            return
        _settle_garbage_collector()
        self.predictor = predictor
        ACTIVE_INPUT.spec = predictor.spec

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def _response(self, predictions: list[dict], n_samples: int | None) -> PredictResponse:
        return PredictResponse.model_validate({
            "model": self.predictor.tag,
            "n_samples": n_samples or self.predictor.default_samples,
            "predictions": predictions,
        })

    @bentoml.api(route="/predict")
    async def predict(self, request: PredictRequest, /) -> PredictResponse:
        """MC dropout predictions for a list of instances (raw pixels, flat or shaped)."""
        x = np.stack(request.instances)
        call = functools.partial(
            self.predictor.predict, x, request.n_samples, request.seed,
            request.risk_threshold, endpoint="predict",
        )
        rows = len(x) * (request.n_samples or self.predictor.default_samples)
        # a small call is cheaper on the event loop than handed to a thread and back;
        # a large one must not hold up the other requests
        predictions = call() if rows <= INLINE_ROWS else await anyio.to_thread.run_sync(call)
        return self._response(predictions, request.n_samples)

    @bentoml.api(
        route="/predict_batched",
        batchable=True,
        max_batch_size=settings.batch_max_size,
        max_latency_ms=settings.batch_max_latency_ms,
    )
    def predict_batched(
        self, items: Annotated[list[BatchItem], Field(min_length=1)]
    ) -> list[Prediction]:
        """Adaptive batching: concurrent requests merge into one engine call, whatever
        their n_samples. Returns one prediction per item, in order."""
        return self.predictor.predict_ragged(
            np.stack([item.instance for item in items]),
            [item.n_samples for item in items],
            endpoint="predict_batched",
        )

    @bentoml.api(route="/predict_image")
    def predict_image(
        self,
        image: Annotated[Path, ContentType("image/*")],
        n_samples: NSamples | None = None,
        seed: Seed | None = None,
    ) -> PredictResponse:
        """A PNG or JPEG upload (multipart field ``image``), converted as the card says."""
        try:
            x = parse_image(str(image), self.predictor.spec)
        except ValueError as error:
            raise bentoml.exceptions.InvalidArgument(f"image: {error}") from None
        predictions = self.predictor.predict(
            x[None], n_samples, seed, None, endpoint="predict_image"
        )
        return self._response(predictions, n_samples)

    @bentoml.api(route="/generate")
    def generate(self, request: GenerateRequest, /) -> GenerateResponse:
        """Images from the GAN generator (UQ_GENERATOR), each with the classifier's MC
        prediction; the same seed gives the same response."""
        if self.sampler is None:
            raise bentoml.exceptions.NotFound(
                "no generator is configured: set UQ_GENERATOR to a tag that uq-train-gan saved"
            )
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        images = self.sampler.images(request.count, seed)  # [count, *input_shape]
        predictions = self.predictor.predict(
            images, request.n_samples, seed, None, endpoint="generate"
        )
        return GenerateResponse.model_validate({
            "generator": self.sampler.tag,
            "model": self.predictor.tag,
            "n_samples": request.n_samples or self.predictor.default_samples,
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
        return {
            "model": self.predictor.tag,
            **self.predictor.card.model_dump(mode="json"),
            "generator": generator,
            "service": settings.model_dump(),
        }


def _settle_garbage_collector() -> None:
    """TensorFlow and Keras leave ~400k long-lived objects: a full collection took
    290 ms, stalling every request in flight. Freeze them out of the collector's
    sight, and make full collections rare: under load they came every 1.3 s and
    scanned the request contexts BentoML keeps for REQUEST_TIMEOUT_SECONDS."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


# BentoML derives the media type of a list output from its JSON schema on every
# response, which took 40% of the batched path's CPU; these outputs are JSON.
for api in UQService.apis.values():
    api.output_spec.media_type = "application/json"
UQService.add_asgi_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes)
quiet_client_error_tracebacks()
