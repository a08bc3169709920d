"""Server settings: every option of `canaryml serve` is also a CANARYML_* environment variable.

Each field's default and description are also its flag's default and help (the CLI package
makes the command's options from this class); docs/serving.md ("Configuration") lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from canaryml_api.tracks import SERVER_PORT, Track
from canaryml_httpd.settings import ConnectionSettings
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from canaryml_server.prediction_ids import check_keys

# Here, not in drift.py: the CLI (and so the operator's process) imports these settings, and the
# drift module brings pandas and scipy, 90 MB the operator never uses.
DRIFT_SAMPLE_ROWS = 16
"""Rows of one request binned for drift at most, by default (0: every row)."""


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
    drift_sample_rows: int = Field(
        default=DRIFT_SAMPLE_ROWS,
        ge=0,
        description="Rows of each request binned for drift at most, chosen at random (0: all).",
    )
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
    # Prediction ids and feedback (docs/serving.md, "Prediction ids and feedback").
    feedback_key: SecretStr | None = Field(
        default=None,
        description="Key that signs prediction ids (at least 16 bytes; unset, with no key file: "
        "no ids, and no feedback).",
    )
    feedback_key_file: Path | None = Field(
        default=None,
        description="File holding the feedback key (a mounted Secret); instead of feedback_key.",
    )
    feedback_previous_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated earlier keys: ids they signed still verify, none are signed "
        "with them.",
    )
    feedback_previous_keys_file: Path | None = Field(
        default=None,
        description="File holding earlier keys, one a line (or comma-separated).",
    )
    feedback_max_age: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds after its prediction that feedback for an id is taken.",
    )
    feedback_max_items: int = Field(
        default=1000, ge=1, description="Most feedback items per request; more get 413."
    )
    feedback_dedup_size: int = Field(
        default=100_000,
        ge=0,
        description="Ids whose feedback this process remembers, to count each once (0: none).",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ServerSettings:
        if self.feedback_key is not None and self.feedback_key_file is not None:
            raise ValueError("set feedback_key or feedback_key_file, not both")
        if self.feedback_previous_keys is not None and self.feedback_previous_keys_file:
            raise ValueError("set feedback_previous_keys or feedback_previous_keys_file, not both")
        # Checked now, so that a short or unreadable key stops `serve` with a message.
        try:
            keys = self.feedback_keys()
        except OSError as error:
            raise ValueError(f"cannot read a feedback key file: {error}") from error
        if keys:
            check_keys(keys)
        return self

    def feedback_keys(self) -> list[bytes]:
        """The key that signs ids first, then the previous ones; empty when none is set.
        Reads the key files (raises OSError when one cannot be read)."""
        current: str | None = None
        if self.feedback_key is not None:
            current = self.feedback_key.get_secret_value()
        elif self.feedback_key_file is not None:
            current = self.feedback_key_file.read_text(encoding="utf-8")
        current = (current or "").strip()
        previous = ""
        if self.feedback_previous_keys is not None:
            previous = self.feedback_previous_keys.get_secret_value()
        elif self.feedback_previous_keys_file is not None:
            previous = self.feedback_previous_keys_file.read_text(encoding="utf-8")
        earlier = [k.strip() for k in previous.replace("\n", ",").split(",") if k.strip()]
        if not current:
            if earlier:
                raise ValueError("previous feedback keys are set, but no current feedback key")
            return []
        return [key.encode() for key in [current, *earlier]]

    @field_validator("trusted_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
