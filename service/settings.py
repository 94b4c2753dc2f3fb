"""Service settings from the environment (``UQ_`` prefix), read once at import."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UQ_", protected_namespaces=())

    model: str = Field("uq-classifier:latest", description="classifier tag in the model store")
    generator: str | None = Field(None, description="optional GAN generator tag")
    default_samples: int | None = Field(
        None, ge=1, description="n_samples when a request gives none (default: the card's)"
    )
    max_samples: int = Field(1000, ge=1, description="largest n_samples a request may ask")
    max_instances: int = Field(64, ge=1, description="most instances in one /predict request")
    batch_max_size: int = Field(64, ge=1, description="adaptive batching: most items per call")
    batch_max_latency_ms: int = Field(
        200, ge=1, description="adaptive batching: latency budget for queueing and the call"
    )
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger bodies get 413")
    access_log: bool = Field(
        False, description="log every request (costs about 1 ms of CPU per request)"
    )
    tracing: bool = Field(
        False, description="keep BentoML's OpenTelemetry spans (for a configured exporter)"
    )


settings = Settings()
