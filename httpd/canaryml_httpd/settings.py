"""The connection-limit options both programs take, declared once.

`canaryml serve` and `canaryml router` derive their settings from `ConnectionSettings`; each
keeps its own environment prefix (CANARYML_ and CANARYML_ROUTER_) and may narrow a field (the
router's `max_concurrency` default, its `max_body_bytes` ceiling).
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from canaryml_httpd.limits import DEFAULT_LIMITS, ConnectionLimits


class ConnectionSettings(BaseSettings):
    max_body_bytes: int = Field(
        default=DEFAULT_LIMITS.max_body_bytes, ge=1024, description="Larger request bodies get 413."
    )
    body_budget_bytes: int = Field(
        default=DEFAULT_LIMITS.body_budget_bytes,
        ge=1024,
        description="Request bodies in flight at most; a request over it gets 503.",
    )
    max_header_bytes: int = Field(
        default=DEFAULT_LIMITS.max_header_bytes,
        ge=1024,
        description="A larger request head gets 431.",
    )
    max_headers: int = Field(
        default=DEFAULT_LIMITS.max_headers, ge=1, description="More header fields get 431."
    )
    header_timeout: float = Field(
        default=DEFAULT_LIMITS.header_timeout,
        gt=0,
        allow_inf_nan=False,
        description="Seconds to send a request head, then 408.",
    )
    body_timeout: float = Field(
        default=DEFAULT_LIMITS.body_timeout,
        gt=0,
        allow_inf_nan=False,
        description="Seconds without a byte of an incomplete request body, then 408.",
    )
    keep_alive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle client connection is kept open."
    )
    max_concurrency: int = Field(
        default=1000,
        ge=1,
        description="Client connections or requests at once at most; requests beyond get 503.",
    )

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Self:
        if self.body_budget_bytes < self.max_body_bytes:
            raise ValueError("body_budget_bytes must be at least max_body_bytes")
        return self

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            max_body_bytes=self.max_body_bytes,
            body_budget_bytes=self.body_budget_bytes,
        )
