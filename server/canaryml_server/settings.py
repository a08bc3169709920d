"""Server settings: every option of `canaryml serve` is also a CANARYML_* environment variable.

docs/serving.md ("Configuration") lists them all with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Track = Literal["stable", "canary", "shadow"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CANARYML_", extra="ignore", protected_namespaces=()
    )

    model_uri: str
    model_sha256: str | None = None
    require_sha256: bool = False
    trusted_sources: Annotated[list[str], NoDecode] = Field(default_factory=list)
    model_name: str | None = None
    model_version: str | None = None
    model_deployment: str | None = None
    track: Track = "stable"
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    runtime: Literal["auto", "sklearn"] = "auto"
    onnx_threads: int = Field(default=1, ge=1)
    drift_enabled: bool = True
    drift_window: int = Field(default=1000, ge=10)
    drift_min_rows: int = Field(default=100, ge=1)
    metrics_enabled: bool = True
    unknown_categories: Literal["reject", "allow"] = "reject"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_batch_rows: int = Field(default=10_000, ge=1)
    model_cache_dir: Path | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    # Fault injection for demos: bad canaries on demand. Off (all zero) in any real deployment.
    inject_errors: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    inject_latency: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    inject_latency_fraction: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)

    @field_validator("trusted_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
