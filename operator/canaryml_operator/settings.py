"""Operator settings: environment variables CANARYML_OPERATOR_* (the Helm chart sets them)."""

from __future__ import annotations

from canaryml_api.resource import HTTP_URL_PATTERN
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from canaryml_operator import __version__
from canaryml_operator.providers import DEFAULT_PROMETHEUS_URL


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANARYML_OPERATOR_", extra="ignore")

    image: str = Field(
        default=f"ghcr.io/canaryml/canaryml:{__version__}",
        description="the serving image for tracks whose spec.serving.image is empty",
    )
    refused_retry_seconds: float = Field(
        default=300.0,
        gt=0,
        description="how long to wait before retrying a change the API server refused (4xx)",
    )
    workers: int = Field(default=8, ge=1, le=256, description="threads for API calls")
    prometheus_url: str = Field(
        default=DEFAULT_PROMETHEUS_URL,
        pattern=HTTP_URL_PATTERN,
        description="the Prometheus of analyses whose spec names none",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve the operator's own metrics on this port (none when unset)",
    )
