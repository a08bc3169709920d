"""Server settings: every option of `canaryml serve` is also a CANARYML_* environment variable.

Each field's default and description are also its flag's default and help (the CLI package
makes the command's options from this class); docs/serving.md ("Configuration") lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from canaryml_api.tracks import SERVER_PORT, Track
from canaryml_httpd.settings import ConnectionSettings
from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict


class ServerSettings(ConnectionSettings):
    """The connection limits (ConnectionSettings) and the model server's own options."""

    model_config = SettingsConfigDict(
        env_prefix="CANARYML_", extra="ignore", protected_namespaces=()
    )

    model_uri: str = Field(description="Artifact folder or URI of the model to serve.")
    model_sha256: str | None = Field(
        default=None,
        description="Expected artifact digest (sha256 of manifest.json); a mismatch refuses to "
        "load.",
    )
    require_sha256: bool = Field(
        default=True,
        description="Refuse to load a model when no digest is configured (false: serve an "
        "unpinned artifact, unverified).",
    )
    trusted_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated URIs or folders; models from anywhere else are refused "
        "(compared on scheme, host, port and whole path segments; local paths resolved).",
    )
    model_name: str | None = Field(
        default=None, description="The name under /v2/models/{name} (default: the manifest's)."
    )
    model_version: str | None = Field(
        default=None,
        description="The version reported and used as the version label (default: the manifest's).",
    )
    model_deployment: str | None = Field(
        default=None,
        description="ModelDeployment name for the metrics labels (default: the model's name).",
    )
    track: Track = Field(default="stable", description="stable, canary or shadow.")
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=SERVER_PORT, ge=0, le=65535, description="Listen port.")
    runtime: Literal["auto", "sklearn"] = Field(
        default="auto", description="auto (the artifact's verified choice) or sklearn."
    )
    onnx_threads: int = Field(default=1, ge=1, description="onnxruntime intra-op threads.")
    drift_enabled: bool = Field(default=True, description="Keep the drift window.")
    drift_window: int = Field(default=1000, ge=10, description="Rows in the drift window.")
    drift_min_rows: int = Field(
        default=100,
        ge=1,
        description="Drift series appear once the window holds this many rows.",
    )
    metrics_enabled: bool = Field(default=True, description="Count requests and latencies.")
    unknown_categories: Literal["reject", "allow"] = Field(
        default="reject", description="reject or allow categories unseen in the reference."
    )
    max_batch_rows: int = Field(default=10_000, ge=1, description="Larger batches get 413.")
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where remote artifacts are downloaded (default: a temporary folder).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="critical, error, warning, info, debug or trace."
    )
    # Fault injection for demos: bad canaries on demand. Off (all zero) in any real deployment.
    inject_errors: float = Field(
        default=0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Demos only: fraction of prediction requests answered 500 without "
        "calling the model.",
    )
    inject_latency: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Demos only: seconds added to a prediction request.",
    )
    inject_latency_fraction: float = Field(
        default=1.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Demos only: fraction of prediction requests that get that latency.",
    )
    max_artifact_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Most bytes a model may download or unpack to; a larger artifact is refused.",
    )
    max_artifact_files: int = Field(
        default=1000,
        ge=1,
        description="Most files (archive entries) a model may have; more are refused.",
    )

    @field_validator("trusted_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
