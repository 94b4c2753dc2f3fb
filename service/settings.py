"""Service settings from the environment (``UQ_`` prefix), read once at import."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UQ_", protected_namespaces=())

    model: str = Field("uq-classifier:latest", description="classifier tag in the model store")
    generator: str | None = Field(None, description="optional GAN generator tag")
    default_samples: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description='n_samples when a request gives none: a calibrated N or "auto" '
        "(default: the card's N)"
    )
    max_auto_samples: int | None = Field(
        None, ge=2, description='most samples of n_samples "auto"; it must be the cap its '
        "calibration used (default: the card's, 100 unless uq-calibrate --max-auto-samples)"
    )
    max_samples: int = Field(1000, ge=1, description="largest n_samples a request may ask")
    max_instances: int = Field(64, ge=1, description="most instances in one /predict request")
    batch_max_size: int = Field(64, ge=1, description="batching: most instances per engine call")
    batch_max_rows: int = Field(
        2048, ge=1, description="batching: most engine rows (instances x samples) per call; "
        "larger requests are sliced and interleaved with the others"
    )
    batch_max_latency_ms: int = Field(
        200, ge=1, description="a request without latency_budget_ms is refused (429) when it "
        "would wait longer than this before its work starts (its own engine time is not counted)"
    )
    max_queued_rows: int = Field(
        131_072, ge=1, description="most engine rows (instances x samples) admitted and not yet "
        "drawn; past it, 429 (a request is always admitted to an empty queue)"
    )
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger bodies get 413")
    access_log: bool = Field(
        False, description="log every request (costs about 1 ms of CPU per request)"
    )
    tracing: bool = Field(
        False, description="keep BentoML's OpenTelemetry spans (for a configured exporter)"
    )
    feedback_key: SecretStr | None = Field(
        None, min_length=16, exclude=True,
        description="HMAC key of the feedback tokens, the same on every replica (default: a "
        "random key per process, so that only this process accepts its tokens)",
    )
    feedback_max_age_hours: float = Field(
        168, gt=0, description="feedback tokens expire this long after the prediction"
    )
    feedback_replay_memory: int = Field(
        1_000_000, ge=1, description="feedback tokens each replica remembers to count once "
        "(about 70 bytes each); when full, older tokens are refused"
    )
    log_predictions: bool = Field(
        True, description="the prediction log through bentoml.monitor (BentoML's monitoring "
        "configuration says where it goes)"
    )
    log_inputs: bool = Field(False, description="put each prediction's input in the log too")


settings = Settings()
