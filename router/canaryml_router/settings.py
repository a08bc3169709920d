"""Router settings: every option of `canaryml router` is also an environment variable.

CANARYML_ROUTER_* for the router's own options; the ModelDeployment and namespace also read
CANARYML_MODEL_DEPLOYMENT and CANARYML_NAMESPACE, the names the model servers use. Each field's
default and description are also its flag's default and help (the CLI package makes the
command's options from this class).
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from canaryml_api.resource import DEFAULT_PROBABILITY_TOLERANCE, CanaryMatch
from canaryml_api.telemetry import VERSION_HEADER
from canaryml_api.tracks import ROUTER_PORT, TRACKS
from canaryml_httpd.limits import DEFAULT_LIMITS
from canaryml_httpd.settings import ConnectionSettings
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from canaryml_router.asgi import MAX_BODY_BYTES
from canaryml_router.core import RateLimit, RoutingTable, SegmentRule
from canaryml_router.ratelimit import DEFAULT_MAX_CLIENTS
from canaryml_router.upstream import (
    ANSWER_BUDGET_BYTES,
    MAX_ANSWER_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    url_problem,
)

_HEADER_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


def parse_track_pairs(value: object, *, what: str) -> object:
    """`stable=http://a,canary=http://b` (an environment variable) or ["stable=...", ...] (the
    repeated CLI option) as {track: value}; other shapes go on to pydantic's own checks."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        return value
    pairs: dict[str, str] = {}
    for item in value:
        track, sep, rest = str(item).partition("=")
        track = track.strip()
        if not sep or not rest.strip():
            raise ValueError(f"{what} {item!r}: expected TRACK=VALUE, e.g. stable=...")
        if track not in TRACKS:
            raise ValueError(f"{what} {item!r}: the track must be stable, canary or shadow")
        pairs[track] = rest.strip()
    return pairs


def parse_segment_rules(value: object) -> object:
    """A/B segment rules from the command line or the environment: a JSON list of canaryMatch
    objects (`[{"header": "x-tenant", "value": "beta"}]`), or rules one per option as
    `header:NAME=VALUE`, `header:NAME=~REGEX` or `cookie:NAME=VALUE`."""
    if isinstance(value, str):
        value = orjson.loads(value) if value.lstrip().startswith("[") else [value]
    if not isinstance(value, list | tuple):
        return value
    rules: list[object] = []
    for item in value:
        if not isinstance(item, str):
            rules.append(item)
            continue
        if item.lstrip().startswith("{"):
            rules.append(orjson.loads(item))
            continue
        kind, _, rest = item.partition(":")
        name, sep, wanted = rest.partition("=")
        if kind not in ("header", "cookie") or not sep or not name or not wanted:
            raise ValueError(
                f"canary match {item!r}: expected header:NAME=VALUE, header:NAME=~REGEX or "
                "cookie:NAME=VALUE"
            )
        if kind == "header" and wanted.startswith("~"):
            rules.append({"header": name, "regex": wanted[1:]})
        else:
            rules.append({kind: name, "value": wanted})
    return rules


class RouterSettings(ConnectionSettings):
    model_config = SettingsConfigDict(
        env_prefix="CANARYML_ROUTER_", extra="ignore", populate_by_name=True
    )

    model_deployment: str = Field(
        default="",
        validation_alias=AliasChoices(
            "CANARYML_ROUTER_MODEL_DEPLOYMENT", "CANARYML_MODEL_DEPLOYMENT"
        ),
        description="ModelDeployment name: followed with --follow, and the metrics label.",
    )
    namespace: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CANARYML_ROUTER_NAMESPACE", "CANARYML_NAMESPACE"),
        description="Its namespace (default: the pod's, else the kubeconfig context's).",
    )
    follow: bool = Field(
        default=False,
        description="Follow the ModelDeployment's weights through a Kubernetes watch; "
        "without it the weights are static.",
    )
    canary_weight: int = Field(
        default=0, ge=0, le=100, description="Static mode: percent of traffic to the canary."
    )
    shadow_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Static mode: percent of prediction requests mirrored to the shadow.",
    )
    sticky_header: str | None = Field(
        default=None,
        max_length=256,
        pattern=_HEADER_PATTERN,
        description="Static mode: requests with the same value of this header stay on one track.",
    )
    upstreams: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="TRACK=URL of a track's model servers (repeatable, or comma-separated); "
        "with --follow it overrides the default http://NAME-TRACK.",
    )
    versions: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Static mode: TRACK=VERSION for the metrics of upstreams that do not "
        f"send {VERSION_HEADER} (repeatable, or comma-separated).",
    )
    probability_tolerance: float = Field(
        default=DEFAULT_PROBABILITY_TOLERANCE,
        ge=0,
        le=1,
        description="Static mode: shadow and live probabilities agree within this.",
    )
    canary_match: Annotated[list[CanaryMatch], NoDecode] = Field(
        default_factory=list,
        max_length=16,
        description="Static mode: A/B segment rule, header:NAME=VALUE, header:NAME=~REGEX or "
        "cookie:NAME=VALUE (repeatable; the environment variable takes a JSON list): a "
        "matching request goes to the canary whatever its weight.",
    )
    rate_limit_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Requests per second each client may make (none: no limit); a followed "
        "ModelDeployment's spec.routing.rateLimit replaces it.",
    )
    rate_limit_burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Requests a client may make at once (default: the rate rounded up).",
    )
    rate_limit_client_header: str | None = Field(
        default=None,
        max_length=256,
        pattern=_HEADER_PATTERN,
        description="Header naming the client for the rate limit (else its address).",
    )
    rate_limit_max_clients: int = Field(
        default=DEFAULT_MAX_CLIENTS,
        ge=1,
        le=10_000_000,
        description="Clients whose rate-limit buckets are kept at most (least recent evicted).",
    )
    admin: bool = Field(
        default=False,
        description="Static mode: accept PUT /router/weights {canaryWeight, shadowPercent} "
        "on the admin listener (needs --admin-port).",
    )
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=ROUTER_PORT, ge=0, le=65535, description="Listen port.")
    upstream_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for a track's answer, then 504."
    )
    shadow_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for the shadow's answer."
    )
    max_mirrors: int = Field(
        default=64, ge=0, description="Mirrors in flight at most; more are skipped."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="critical, error, warning, info, debug or trace."
    )

    # --- the admin listener and the upstream bounds (docs/serving.md) ----------------------
    admin_host: str = Field(
        default="127.0.0.1",
        description="Listen address of the admin listener.",
    )
    admin_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the admin listener (/router/weights, /metrics, health); none "
        "by default.",
    )
    admin_upstreams: bool = Field(
        default=False,
        description="With --admin: PUT /router/weights may also repoint a track's upstream.",
    )
    max_upstream_connections: int = Field(
        default=MAX_CONNECTIONS,
        ge=1,
        description="Open connections per upstream at most; more requests wait, then 504.",
    )
    max_upstream_answer_bytes: int = Field(
        default=MAX_ANSWER_BYTES,
        ge=1,
        description="Largest upstream or shadow answer body; larger is a 502.",
    )
    upstream_answer_budget_bytes: int = Field(
        default=ANSWER_BUDGET_BYTES,
        ge=1024,
        description="Upstream and shadow answer bytes held at once, all upstreams together; "
        "an answer beyond it gets 503.",
    )
    max_upstream_head_bytes: int = Field(
        default=MAX_HEAD_BYTES,
        ge=1,
        description="Largest upstream answer head (status line and headers); larger is a 502.",
    )

    # --- client connection limits (ConnectionSettings, docs/serving.md): the router narrows two
    max_body_bytes: int = Field(
        default=DEFAULT_LIMITS.max_body_bytes,
        ge=1024,
        le=MAX_BODY_BYTES,
        description="Larger request bodies get 413.",
    )
    max_concurrency: int = Field(
        default=2000,
        ge=1,
        description="Client connections or requests at once at most; requests beyond get 503.",
    )

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_upstreams(cls, value: object) -> object:
        return parse_track_pairs(value, what="upstream")

    @field_validator("versions", mode="before")
    @classmethod
    def _split_versions(cls, value: object) -> object:
        return parse_track_pairs(value, what="version")

    @field_validator("canary_match", mode="before")
    @classmethod
    def _segment_rules(cls, value: object) -> object:
        return parse_segment_rules(value)

    @field_validator("upstreams")
    @classmethod
    def _http_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for track, url in value.items():
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(f"upstream of {track} {url!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RouterSettings:
        if not self.model_deployment:
            raise ValueError(
                "name the ModelDeployment: --model-deployment NAME or CANARYML_MODEL_DEPLOYMENT"
            )
        if self.follow:
            if self.admin:
                raise ValueError(
                    "--admin is for static weights: with --follow the ModelDeployment's status "
                    "sets them"
                )
            return self
        if "stable" not in self.upstreams:
            raise ValueError(
                "without --follow the router needs --upstream stable=URL "
                "(and canary=URL, shadow=URL for those tracks)"
            )
        for track, share in (("canary", self.canary_weight), ("shadow", self.shadow_percent)):
            if share > 0 and track not in self.upstreams:
                raise ValueError(f"a {track} share above 0 needs --upstream {track}=URL")
        return self

    @model_validator(mode="after")
    def _admin_listener(self) -> RouterSettings:
        if self.admin and self.admin_port is None:
            raise ValueError(
                "--admin changes the weights through the admin listener: give --admin-port too"
            )
        if self.admin_upstreams and not self.admin:
            raise ValueError("--admin-upstreams needs --admin (static weights)")
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError("--admin-port must differ from --port")
        return self

    @model_validator(mode="after")
    def _answer_budget_holds_an_answer(self) -> RouterSettings:
        if self.upstream_answer_budget_bytes < self.max_upstream_answer_bytes:
            raise ValueError(
                "--upstream-answer-budget-bytes must be at least --max-upstream-answer-bytes"
            )
        return self

    def rate_limit(self) -> RateLimit | None:
        """The per-client limit these settings set, if any."""
        if self.rate_limit_requests_per_second is None:
            return None
        return RateLimit.of(
            self.rate_limit_requests_per_second,
            self.rate_limit_burst,
            self.rate_limit_client_header,
        )

    def static_table(self) -> RoutingTable:
        """The table of the static mode."""
        return RoutingTable(
            upstreams=self.upstreams,
            canary_weight=self.canary_weight,
            shadow_percent=self.shadow_percent,
            sticky_header=self.sticky_header,
            versions=self.versions,
            probability_tolerance=self.probability_tolerance,
            segments=tuple(SegmentRule.of(rule) for rule in self.canary_match),
            rate_limit=self.rate_limit(),
        )
