"""Operator settings: environment variables CANARYML_OPERATOR_* (the Helm chart sets them)."""

from __future__ import annotations

from typing import Any, Literal

from canaryml_api import resource as api
from canaryml_api.resource import HTTP_URL_PATTERN
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from canaryml_operator import __version__
from canaryml_operator.children import Safeguards
from canaryml_operator.providers import DEFAULT_PROMETHEUS_URL

# The Prometheus of `prometheus.url`'s default (namespace monitoring), with the label the
# Prometheus Operator, kube-prometheus-stack and the prometheus chart give its pods.
DEFAULT_METRICS_PEERS: tuple[dict[str, Any], ...] = (
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    },
)
PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


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
    network_policies: bool = Field(
        default=True,
        description="give each ModelDeployment NetworkPolicies: its model servers take traffic "
        "from its router and the metrics peers only, its router on its serving port only",
    )
    metrics_peers: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(peer) for peer in DEFAULT_METRICS_PEERS],
        description="NetworkPolicyPeers (JSON list) that may scrape the model servers: your "
        "Prometheus; empty admits none",
    )
    feedback_key_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="a Secret, in each ModelDeployment's namespace, whose key "
        "`feedback_key_secret_key` signs prediction ids, for ModelDeployments whose "
        "spec.serving.feedback is empty (none: those issue no ids)",
    )
    feedback_key_secret_key: str = Field(
        default="key", min_length=1, max_length=253, description="the key in that Secret"
    )
    gateway_peers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="NetworkPolicyPeers (JSON list) of the gateway's data plane, for gateway-api "
        "routing; empty: no NetworkPolicy on the model servers in that mode",
    )

    notify_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=HTTP_URL_PATTERN,
        description="the notification webhook of ModelDeployments whose spec.notifications is "
        "empty (none when unset; the chart sets it from a Secret)",
    )
    notify_format: Literal["json", "slack"] = Field(
        default="json", description="the format of notify_url: json or slack"
    )
    notify_events: list[api.NotificationEvent] = Field(
        default_factory=lambda: list(api.NOTIFICATION_EVENTS),
        min_length=1,
        description="the events told to notify_url (JSON list)",
    )
    notify_limit: int = Field(
        default=10, ge=1, le=1000, description="notifications per ModelDeployment per window"
    )
    notify_window_seconds: float = Field(
        default=600.0, gt=0, le=86400, description="the window of notify_limit, in seconds"
    )

    @field_validator("metrics_peers", "gateway_peers")
    @classmethod
    def _peers(cls, peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for peer in peers:
            if not peer or not set(peer) <= PEER_KEYS:
                raise ValueError(
                    f"a NetworkPolicyPeer has one or more of {sorted(PEER_KEYS)}, got {peer}"
                )
        return peers

    def default_feedback(self) -> api.FeedbackSpec | None:
        """spec.serving.feedback for ModelDeployments that name no key of their own."""
        if self.feedback_key_secret is None:
            return None
        ref = api.SecretKeyRef(name=self.feedback_key_secret, key=self.feedback_key_secret_key)
        return api.FeedbackSpec(key_secret_ref=ref)

    def default_notifications(self) -> list[api.NotificationSpec]:
        """spec.notifications for ModelDeployments that name none."""
        if self.notify_url is None:
            return []
        return [
            api.NotificationSpec(
                url=self.notify_url, format=self.notify_format, events=list(self.notify_events)
            )
        ]

    def safeguards(self) -> Safeguards:
        return Safeguards(
            network_policies=self.network_policies,
            metrics_peers=tuple(self.metrics_peers),
            gateway_peers=tuple(self.gateway_peers),
        )
