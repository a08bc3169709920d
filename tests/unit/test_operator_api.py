"""The ModelDeployment API models: what they accept, what they fill in, how they refuse."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from canaryml_api import resource as api
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.unit.specs import CANARY_MODEL, DESIGN_EXAMPLE, MINIMAL, SHA_STABLE, changed


def with_canary(**canary: Any) -> dict[str, Any]:
    return {**MINIMAL, "canary": {"model": CANARY_MODEL, **canary}}


def refusal(raw: Any) -> str:
    with pytest.raises(ValueError) as caught:
        api.parse_spec(raw)
    return str(caught.value)


# --- accepting and defaulting ----------------------------------------------------------------


def test_the_design_example_is_accepted_with_every_value_kept() -> None:
    spec = api.parse_spec(DESIGN_EXAMPLE)

    assert spec.model.sha256 == SHA_STABLE
    assert spec.canary is not None
    assert spec.canary.model.version == "1.1.0"
    assert spec.canary.steps == [5, 10, 25, 50]
    assert spec.shadow is not None
    assert spec.shadow.model.uri == "gs://models/iris/2.0.0"
    assert spec.analysis.metrics[0].name == "business-kpi"
    assert spec.analysis.metrics[0].max == 10
    assert spec.routing.sticky_header == "x-user-id"
    assert spec.serving.replicas == 2
    assert spec.serving.resources == DESIGN_EXAMPLE["serving"]["resources"]


def test_the_design_example_round_trips_through_the_camel_case_wire_format() -> None:
    spec = api.parse_spec(DESIGN_EXAMPLE)
    dumped = spec.model_dump(by_alias=True, exclude_none=True)

    assert api.parse_spec(dumped) == spec
    assert dumped["canary"]["stepInterval"] == "30s"
    assert dumped["analysis"]["thresholds"]["maxLatencyP99"] == "250ms"


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = api.parse_spec(MINIMAL)

    assert spec.canary is None
    assert spec.shadow is None
    assert spec.paused is False
    assert spec.model.sha256 is None
    assert spec.analysis.prometheus.url is None  # the operator's default URL applies
    assert (spec.analysis.interval, spec.analysis.window) == ("15s", "1m")
    assert (spec.analysis.min_requests, spec.analysis.failure_limit) == (50, 2)
    assert spec.analysis.thresholds == api.Thresholds(
        max_error_rate=0.05,
        max_latency_p99="250ms",
        max_drift=0.25,
        max_prediction_drift=0.25,
        min_shadow_agreement=0.9,
    )
    assert spec.analysis.metrics == []
    assert spec.routing.router == "builtin"
    assert spec.routing.sticky_header is None
    assert spec.serving.replicas == 1
    assert spec.serving.image is None
    assert spec.serving.resources is None


def test_a_canary_and_a_shadow_get_their_defaults() -> None:
    spec = api.parse_spec({**with_canary(), "shadow": {"model": CANARY_MODEL}})

    assert spec.canary is not None
    assert spec.canary.steps == [5, 10, 25, 50]
    assert spec.canary.step_interval == "30s"
    assert spec.canary.replicas == 1
    assert spec.shadow is not None
    assert (spec.shadow.percent, spec.shadow.replicas) == (100, 1)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/iris/1.0.0",
        "gs://bucket/iris",
        "http://model-store/stable",
        "https://models.example.com/iris.tar.gz",
        "file:///srv/models/iris",
        "pvc://models-claim/iris/1.0.0",
        "models:/iris/3",
    ],
)
def test_every_documented_uri_scheme_is_accepted(uri: str) -> None:
    assert api.parse_spec(changed(MINIMAL, "model.uri", uri)).model.uri == uri


def test_a_canary_with_the_same_uri_but_another_version_is_accepted() -> None:
    raw = with_canary(model={"uri": MINIMAL["model"]["uri"], "version": "1.0.1"})
    assert api.parse_spec(raw).canary is not None


def test_the_parsed_spec_is_immutable() -> None:
    spec = api.parse_spec(MINIMAL)
    with pytest.raises(ValueError):
        spec.paused = True


# --- refusing, with the field path in the message ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        pytest.param(
            changed(MINIMAL, "model.uri", "ftp://host/iris"),
            "spec.model.uri",
            "unsupported model URI",
            id="ftp-scheme",
        ),
        pytest.param(
            changed(MINIMAL, "model.uri", "iris.joblib"),
            "spec.model.uri",
            "unsupported model URI",
            id="no-scheme",
        ),
        pytest.param(
            with_canary(steps=[5, 25, 10]),
            "spec.canary.steps",
            "strictly increasing",
            id="steps-decreasing",
        ),
        pytest.param(
            with_canary(steps=[10, 10, 50]),
            "spec.canary.steps",
            "strictly increasing",
            id="steps-repeated",
        ),
        pytest.param(
            with_canary(steps=[0, 50]), "spec.canary.steps.0", "greater than", id="step-zero"
        ),
        pytest.param(
            with_canary(steps=[50, 101]), "spec.canary.steps.1", "less than", id="step-above-100"
        ),
        pytest.param(with_canary(steps=[]), "spec.canary.steps", "at least 1", id="no-steps"),
        pytest.param(
            with_canary(stepInterval="5x"),
            "spec.canary.stepInterval",
            "not a duration",
            id="duration-unit",
        ),
        pytest.param(
            with_canary(stepInterval="0s"),
            "spec.canary.stepInterval",
            "greater than zero",
            id="duration-zero",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.window", "1 m"),
            "spec.analysis.window",
            "not a duration",
            id="duration-space",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.thresholds.maxLatencyP99", "0ms"),
            "spec.analysis.thresholds.maxLatencyP99",
            "greater than zero",
            id="latency-zero",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.thresholds.maxErrorRate", 1.5),
            "spec.analysis.thresholds.maxErrorRate",
            "less than or equal to 1",
            id="error-rate-above-1",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.thresholds.minShadowAgreement", -0.1),
            "spec.analysis.thresholds.minShadowAgreement",
            "greater than or equal to 0",
            id="agreement-negative",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.failureLimit", 0),
            "spec.analysis.failureLimit",
            "greater than or equal to 1",
            id="failure-limit-zero",
        ),
        pytest.param(
            changed(MINIMAL, "analysis.metrics", [{"name": "kpi", "query": "up"}]),
            "spec.analysis.metrics.0",
            "set min, max or both",
            id="metric-unbounded",
        ),
        pytest.param(
            changed(
                MINIMAL, "analysis.metrics", [{"name": "kpi", "query": "up", "min": 2, "max": 1}]
            ),
            "spec.analysis.metrics.0",
            "exceeds max",
            id="metric-min-above-max",
        ),
        pytest.param(
            changed(
                MINIMAL,
                "analysis.metrics",
                [
                    {"name": "kpi", "query": "up", "min": 1},
                    {"name": "kpi", "query": "down", "max": 1},
                ],
            ),
            "spec.analysis",
            "names must be unique: kpi",
            id="metric-duplicate-names",
        ),
        pytest.param(
            changed(
                MINIMAL, "analysis.metrics", [{"name": "Business KPI", "query": "up", "min": 1}]
            ),
            "spec.analysis.metrics.0.name",
            "pattern",
            id="metric-name-not-dns",
        ),
        pytest.param(
            with_canary(model=MINIMAL["model"]),
            "spec",
            "canary must differ from the stable model",
            id="canary-is-stable",
        ),
        pytest.param({}, "spec.model", "Field required", id="no-model"),
        pytest.param(
            {"model": {"uri": "s3://m/iris"}},
            "spec.model.version",
            "Field required",
            id="no-version",
        ),
        pytest.param(
            changed(MINIMAL, "model.sha256", "ABC"), "spec.model.sha256", "pattern", id="bad-sha"
        ),
        pytest.param({**MINIMAL, "replica": 3}, "spec.replica", "Extra inputs", id="unknown-top"),
        pytest.param(
            changed(MINIMAL, "analysis.thresholds.maxErrorRatio", 0.1),
            "spec.analysis.thresholds.maxErrorRatio",
            "Extra inputs",
            id="unknown-nested",
        ),
        pytest.param(
            changed(MINIMAL, "model.max_error_rate", 0.1),
            "spec.model.max_error_rate",
            "Extra inputs",
            id="unknown-in-model",
        ),
        pytest.param(
            changed(MINIMAL, "routing.router", "istio"),
            "spec.routing.router",
            "builtin",
            id="unknown-router",
        ),
        pytest.param(
            changed(MINIMAL, "serving.replicas", -1),
            "spec.serving.replicas",
            "greater than or equal to 0",
            id="negative-replicas",
        ),
    ],
)
def test_an_invalid_spec_is_refused_naming_the_field(raw: Any, path: str, words: str) -> None:
    message = refusal(raw)

    assert message.startswith(f"{path}: "), message
    assert words in message


def test_a_missing_spec_is_refused_as_a_missing_model() -> None:
    assert refusal(None) == "spec.model: Field required"


def test_several_problems_are_reported_together() -> None:
    raw = changed(with_canary(steps=[50, 10]), "model.version", "")
    problems = refusal(raw).split("; ")

    assert [problem.split(":")[0] for problem in problems] == [
        "spec.model.version",
        "spec.canary.steps",
    ]


def test_the_refusal_is_a_plain_value_error_without_pydantic_noise() -> None:
    with pytest.raises(ValueError) as caught:
        api.parse_spec(changed(MINIMAL, "model.uri", "ftp://x/y"))

    assert type(caught.value) is ValueError
    assert caught.value.__cause__ is None
    assert "pydantic" not in str(caught.value)
    assert "Value error" not in str(caught.value)


# --- properties ---------------------------------------------------------------------------------

weights = st.integers(min_value=1, max_value=100)


@given(st.lists(weights, min_size=1, max_size=20, unique=True).map(sorted))
def test_any_strictly_increasing_steps_are_accepted(steps: list[int]) -> None:
    spec = api.parse_spec(with_canary(steps=steps))

    assert spec.canary is not None
    assert spec.canary.steps == steps


@given(st.lists(weights, min_size=2, max_size=20))
def test_any_steps_with_a_non_increase_are_refused(steps: list[int]) -> None:
    assume(any(after <= before for before, after in itertools.pairwise(steps)))

    assert refusal(with_canary(steps=steps)).startswith("spec.canary.steps: ")


@given(st.integers(min_value=-1000, max_value=1000).filter(lambda w: not 1 <= w <= 100))
def test_any_step_outside_1_to_100_is_refused(weight: int) -> None:
    assert refusal(with_canary(steps=[weight])).startswith("spec.canary.steps.0: ")


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("0.5h", 1800.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_reads_go_style_durations(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "5", "s", "-1s", "1 m", "1m 30s", "1d", "1.s", "PT5S"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        api.parse_duration(text)


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000))
def test_parse_duration_of_minutes_and_seconds_is_the_arithmetic(
    minutes: int, seconds: int
) -> None:
    assert api.parse_duration(f"{minutes}m{seconds}s") == 60 * minutes + seconds


@given(
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=999),
)
def test_parse_duration_adds_every_unit(hours: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{seconds}s{millis}ms"
    assert api.parse_duration(text) == pytest.approx(3600 * hours + seconds + millis / 1000)


# --- status -----------------------------------------------------------------------------------


def test_parse_status_reads_what_the_operator_wrote() -> None:
    status = api.parse_status(
        {
            "phase": "Progressing",
            "canaryWeight": 10,
            "currentStep": 1,
            "stableVersion": "1.0.0",
            "canaryVersion": "1.1.0",
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "StableAvailable",
                    "lastTransitionTime": "2024-05-01T12:00:00Z",
                }
            ],
            "history": [
                {
                    "version": "0.9.0",
                    "uri": "s3://m/0.9.0",
                    "event": "promoted",
                    "time": "2024-04-01T00:00:00Z",
                }
            ],
        }
    )

    assert (status.phase, status.canary_weight, status.current_step) == ("Progressing", 10, 1)
    assert (status.stable_version, status.canary_version) == ("1.0.0", "1.1.0")
    assert status.observed_generation == 3
    assert status.conditions[0].reason == "StableAvailable"
    assert status.history[0].event == "promoted"


def test_parse_status_ignores_fields_a_newer_operator_added() -> None:
    status = api.parse_status({"phase": "Stable", "fancyNewField": {"a": 1}})
    assert status.phase == "Stable"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        "garbage",
        42,
        [1, 2, 3],
        {"phase": "Exploded"},
        {"canaryWeight": 250},
        {"canaryWeight": "lots"},
        {"conditions": [{"type": "Ready"}]},
        {"conditions": "Ready"},
        {"history": [{"event": "vanished"}]},
    ],
)
def test_parse_status_of_garbage_is_a_fresh_status(raw: Any) -> None:
    assert api.parse_status(raw) == api.ModelDeploymentStatus()


def test_parse_status_drops_only_the_unreadable_field() -> None:
    entry = {"version": "1.0.0", "uri": "s3://m/1.0.0", "event": "promoted"}
    status = api.parse_status(
        {
            "phase": "Progressing",
            "canaryWeight": 250,  # unreadable: over 100
            "currentStep": 2,
            "failedChecks": "lots",  # unreadable
            "stableVersion": "1.0.0",
            "history": [
                {**entry, "time": "2024-04-01T00:00:00Z"},
                {"event": "vanished"},  # unreadable entry
                {**entry, "version": "1.1.0", "time": "2024-04-02T00:00:00Z"},
            ],
            "conditions": [
                {"type": "Ready", "status": "Maybe", "reason": "X"},
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "CanaryAnalysis",
                    "lastTransitionTime": "2024-05-01T12:00:00Z",
                },
            ],
        }
    )

    assert (status.phase, status.current_step, status.stable_version) == ("Progressing", 2, "1.0.0")
    assert (status.canary_weight, status.failed_checks) == (0, 0)  # the defaults
    assert [h.version for h in status.history] == ["1.0.0", "1.1.0"]
    assert [c.type for c in status.conditions] == ["Progressing"]


def test_parse_status_keeps_the_newest_entries_of_an_overlong_history() -> None:
    entries = [
        {
            "version": f"1.{i}.0",
            "uri": "s3://m",
            "event": "promoted",
            "time": "2024-04-01T00:00:00Z",
        }
        for i in range(25)
    ]
    status = api.parse_status({"phase": "Stable", "history": entries})
    assert status.phase == "Stable"
    assert [h.version for h in status.history] == [f"1.{i}.0" for i in range(5, 25)]


def test_one_problem_is_one_part_of_the_joined_message() -> None:
    try:
        api.parse_spec({"model": {"uri": "ftp://x", "version": "1"}, "paused": "maybe"})
    except ValueError as error:
        parts = str(error).split("; ")
    else:
        raise AssertionError("accepted")

    assert len(parts) == 2
    assert parts[0].startswith("spec.model.uri: unsupported model URI 'ftp://x' (use s3://")
    assert parts[1].startswith("spec.paused:")


@pytest.mark.parametrize("name", api.RESERVED_METRIC_NAMES)
def test_a_custom_metric_may_not_take_the_name_of_a_built_in_check(name: str) -> None:
    """`accuracy` included: a custom `accuracy` would be judged and shown as the built-in one."""
    spec = changed(DESIGN_EXAMPLE, "analysis.metrics.0.name", name)
    with pytest.raises(ValueError, match=f"{name} are taken by built-in checks"):
        api.parse_spec(spec)
