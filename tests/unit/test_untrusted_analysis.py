"""What the analysis takes from outside: values a check cannot have are Errors, never passes,
and a Secret is sent to Prometheus only when it opted in."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import measurements as m
from canaryml_operator import providers, verdicts
from canaryml_operator.measurements import Measurements, Sample

from tests.unit.test_rollout import GOOD, T0, make_spec

INF = math.inf
NAN = math.nan


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (m.ERROR_RATE, -INF),
        (m.ERROR_RATE, -0.5),
        (m.ERROR_RATE, 1.5),
        (m.ERROR_RATE, INF),
        (m.LATENCY_P99, -INF),
        (m.LATENCY_P99, -0.1),
        (m.DRIFT, -1.0),
        (m.DRIFT, -INF),
        (m.PREDICTION_DRIFT, -INF),
        (m.SHADOW_AGREEMENT, INF),
        (m.SHADOW_AGREEMENT, 1.01),
        (m.SHADOW_AGREEMENT, -0.01),
        (m.REQUESTS, INF),
        (m.REQUESTS, -5.0),
    ],
)
def test_a_value_outside_its_checks_range_is_an_error(check: str, value: float) -> None:
    spec = make_spec(shadow={"model": {"uri": "s3://models/iris/9.9.9", "version": "9.9.9"}})
    samples = {name: Sample(v) for name, v in {**GOOD, m.SHADOW_AGREEMENT: 0.99}.items()}
    samples[check] = Sample(value)
    results = verdicts.judge(spec=spec, measurements=Measurements(time=T0, samples=samples))
    result = next(r for r in results if r.name == check)
    assert result.verdict == "Error", result
    assert "finite" in result.message or "possible range" in result.message
    assert verdicts.overall(results) == "Error"
    record = verdicts.build_record(results=results, time=T0, step=0, weight=5)
    api.AnalysisRecord.model_validate(record.model_dump(by_alias=True, mode="json"))


@pytest.mark.parametrize("value", [0.0, 1.0, 1.0 + 1e-12, -1e-12])
def test_the_bounds_of_a_range_and_rounding_slack_are_possible(value: float) -> None:
    result = verdicts.judge_value(name=m.ERROR_RATE, sample=Sample(value))
    assert result.verdict == "Successful"


@pytest.mark.parametrize("check", [m.LATENCY_P99, m.DRIFT, m.PREDICTION_DRIFT])
def test_plus_infinity_of_latency_or_drift_fails(check: str) -> None:
    # histogram_quantile's answer past the last bucket: over any max, so Failed, not held.
    assert verdicts.judge_value(name=check, sample=Sample(INF), max=0.25).verdict == "Failed"


def test_a_custom_check_must_be_finite() -> None:
    assert verdicts.judge_value(name="kpi", sample=Sample(INF), min=0.5).verdict == "Error"
    assert verdicts.judge_value(name="kpi", sample=Sample(-INF), max=2.0).verdict == "Error"
    assert verdicts.judge_value(name="kpi", sample=Sample(-3.0), max=2.0).verdict == "Successful"


@pytest.mark.parametrize("check", [m.ERROR_RATE, m.LATENCY_P99, m.DRIFT, m.SHADOW_AGREEMENT])
def test_nan_is_no_data_and_never_a_pass(check: str) -> None:
    result = verdicts.judge_value(name=check, sample=Sample(NAN), min=0.0, max=1.0)
    assert result.verdict == "Inconclusive"
    assert (
        verdicts.judge(
            spec=make_spec(), measurements=Measurements(time=T0, samples={m.REQUESTS: Sample(NAN)})
        )[0].verdict
        != "Successful"
    )


# ---------------------------------------------------------------------------------------------
# Secrets for analysis.prometheus


def secret(labels: dict[str, str] | None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    token = base64.b64encode(b"s3cret\n").decode()
    return {
        "metadata": {"name": "prom", "namespace": "ml", "labels": labels},
        "data": {"token": token} if data is None else data,
    }


def test_an_opted_in_secret_is_read() -> None:
    found = secret({providers.CREDENTIALS_LABEL: "true"})
    value = providers.secret_value(found, key="token", what="bearerTokenSecretRef")
    assert providers.auth_headers(bearer_token=value, authorization=None) == {
        "Authorization": "Bearer s3cret"
    }


@pytest.mark.parametrize(
    "labels", [None, {}, {providers.CREDENTIALS_LABEL: "false"}, {"other": "true"}]
)
def test_a_secret_that_did_not_opt_in_is_refused_naming_the_label(
    labels: dict[str, str] | None,
) -> None:
    with pytest.raises(ValueError) as refused:
        providers.secret_value(secret(labels), key="token", what="authorizationSecretRef")
    message = str(refused.value)
    assert "canaryml.dev/prometheus-credentials=true" in message
    assert "Secret ml/prom" in message
    assert "s3cret" not in message


def test_a_missing_or_broken_key_is_refused() -> None:
    labels = {providers.CREDENTIALS_LABEL: "true"}
    with pytest.raises(ValueError, match="no key 'other'"):
        providers.secret_value(secret(labels), key="other", what="bearerTokenSecretRef")
    with pytest.raises(ValueError, match="not base64"):
        providers.secret_value(
            secret(labels, {"token": "%%%"}), key="token", what="bearerTokenSecretRef"
        )


class SecretsOnly:
    """The one call the analysis makes to the API before Prometheus: reading a Secret."""

    def __init__(self, secret: dict[str, Any]) -> None:
        self.secret = secret

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert (kind, namespace, name) == ("Secret", "ml", "prom")
        return self.secret


async def test_a_secret_not_opted_in_is_an_error_and_one_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from canaryml_operator import main
    from canaryml_operator.state import Owner

    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(main.kopf, "event", lambda body, **event: posted.append(event))
    spec = make_spec(
        analysis={
            "prometheus": {
                "url": "http://127.0.0.1:9",
                "bearerTokenSecretRef": {"name": "prom", "key": "token"},
            }
        }
    )
    owner = Owner(name="iris", namespace="ml", uid="u")
    kube: Any = SecretsOnly(secret(None))

    async def analysis(last: api.AnalysisRecord | None) -> api.AnalysisRecord:
        measured = await main.take_measurements(
            spec=spec,
            owner=owner,
            now=T0,
            kube=kube,
            body={"metadata": {}},
            status=api.ModelDeploymentStatus(last_analysis=last),
        )
        results = verdicts.judge(spec=spec, measurements=measured)
        return verdicts.build_record(results=results, time=T0, step=0, weight=5)

    first = await analysis(None)
    assert first.verdict == "Error"
    assert all("canaryml.dev/prometheus-credentials=true" in r for r in first.reasons)
    assert [(e["type"], e["reason"]) for e in posted] == [("Warning", "CredentialsRefused")]
    again = await analysis(first)
    assert again.verdict == "Error"
    assert len(posted) == 1  # said once, while the analyses keep saying so
