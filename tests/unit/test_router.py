"""The router's pure decisions: split, sticky hashing, mirroring, shadow comparison, the table a
ModelDeployment stands for, and the router's settings."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest
from canaryml_api.tracks import service_url
from canaryml_router.core import (
    BUCKETS,
    RoutingTable,
    choose_track,
    compare_answers,
    parse_answer,
    should_mirror,
    sticky_bucket,
    table_from_model_deployment,
)
from canaryml_router.settings import RouterSettings
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

UPSTREAMS = {"stable": "http://s", "canary": "http://c", "shadow": "http://sh"}


def _table(**overrides: Any) -> RoutingTable:
    values: dict[str, Any] = {"upstreams": UPSTREAMS}
    values.update(overrides)
    return RoutingTable(**values)


def _within_binomial(hits: int, n: int, p: float, *, sigmas: float = 5.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(hits - n * p) <= sigmas * sd


# --- weighted split --------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1, 10, 50, 90])
def test_weight_honoured_within_binomial_bounds(weight: int) -> None:
    table = _table(canary_weight=weight)
    rng = random.Random(weight)
    n = 20_000
    canary = sum(
        choose_track(table, sticky_value=None, draw=rng.random()) == "canary" for _ in range(n)
    )
    assert _within_binomial(canary, n, weight / 100), (canary, n, weight)


@pytest.mark.parametrize(("weight", "expected"), [(0, "stable"), (100, "canary")])
def test_weights_0_and_100_are_exact(weight: int, expected: str) -> None:
    table = _table(canary_weight=weight)
    draws = [0.0, 0.999999, *(random.Random(1).random() for _ in range(5000))]
    assert {choose_track(table, sticky_value=None, draw=d) for d in draws} == {expected}
    users = {choose_track(table, sticky_value=f"user-{i}", draw=0.5) for i in range(5000)}
    assert users == {expected}


def test_canary_without_upstream_gets_nothing() -> None:
    table = RoutingTable(upstreams={"stable": "http://s"}, canary_weight=100)
    assert not table.canary_active
    assert choose_track(table, sticky_value=None, draw=0.0) == "stable"


def test_the_draw_boundary() -> None:
    table = _table(canary_weight=10)
    assert choose_track(table, sticky_value=None, draw=0.0999) == "canary"
    assert choose_track(table, sticky_value=None, draw=0.1) == "stable"


# --- sticky hashing --------------------------------------------------------------------------


def test_sticky_bucket_is_stable_and_in_range() -> None:
    # Fixed values: a change of hash would move every user of every running rollout.
    assert sticky_bucket("alice") == sticky_bucket("alice")
    assert [sticky_bucket(v) for v in ("alice", "bob", "")] == [
        sticky_bucket("alice"),
        sticky_bucket("bob"),
        sticky_bucket(""),
    ]
    assert all(0 <= sticky_bucket(f"u{i}") < BUCKETS for i in range(1000))


def test_sticky_bucket_does_not_depend_on_the_process() -> None:
    import subprocess
    import sys

    code = "from canaryml_router.core import sticky_bucket; print(sticky_bucket('alice'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert int(other.stdout) == sticky_bucket("alice")


def test_sticky_value_ignores_the_draw() -> None:
    table = _table(canary_weight=50, sticky_header="x-user-id")
    for i in range(200):
        tracks = {choose_track(table, sticky_value=f"user-{i}", draw=d) for d in (0.0, 0.5, 0.99)}
        assert len(tracks) == 1


def test_sticky_needs_the_table_to_name_a_header() -> None:
    table = _table(canary_weight=50)  # no sticky header: a stray value is ignored
    assert choose_track(table, sticky_value="user", draw=0.0) == "canary"
    assert choose_track(table, sticky_value="user", draw=0.99) == "stable"


@given(user=st.text(max_size=40), low=st.integers(0, 100), high=st.integers(0, 100))
def test_sticky_is_monotone_in_the_weight(user: str, low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    at_low = choose_track(_table(canary_weight=low, sticky_header="x"), sticky_value=user, draw=0)
    at_high = choose_track(_table(canary_weight=high, sticky_header="x"), sticky_value=user, draw=0)
    if at_low == "canary":
        assert at_high == "canary"


def test_sticky_users_follow_the_weight_step_by_step() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    previous: set[str] = set()
    for weight in (5, 10, 25, 50, 100):
        table = _table(canary_weight=weight, sticky_header="x-user-id")
        canary = {u for u in users if choose_track(table, sticky_value=u, draw=0.5) == "canary"}
        assert previous <= canary, "a user left the canary when its weight went up"
        assert _within_binomial(len(canary), len(users), weight / 100), (weight, len(canary))
        previous = canary


# --- mirroring -------------------------------------------------------------------------------


def test_mirror_share() -> None:
    rng = random.Random(7)
    n = 20_000
    mirrored = sum(should_mirror(percent=30, draw=rng.random()) for _ in range(n))
    assert _within_binomial(mirrored, n, 0.3)
    assert not any(should_mirror(percent=0, draw=rng.random()) for _ in range(1000))
    assert all(should_mirror(percent=100, draw=rng.random()) for _ in range(1000))


# --- comparison ------------------------------------------------------------------------------


def _predict(labels: list[Any], probabilities: list[list[float]] | None = None) -> bytes:
    body: dict[str, Any] = {"model": "m", "version": "1", "predictions": labels}
    if probabilities is not None:
        body["probabilities"] = probabilities
        body["classes"] = [0, 1]
    return orjson.dumps(body)


def _v2(labels: list[Any] | None, probabilities: list[list[float]] | None = None) -> bytes:
    outputs: list[dict[str, Any]] = []
    if labels is not None:
        outputs.append(
            {"name": "predict", "shape": [len(labels)], "datatype": "INT64", "data": labels}
        )
    if probabilities is not None:
        flat = [p for row in probabilities for p in row]
        shape = [len(probabilities), len(probabilities[0])]
        outputs.append({"name": "predict_proba", "shape": shape, "datatype": "FP64", "data": flat})
    return orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outputs})


@pytest.mark.parametrize("fmt", [_predict, _v2])
def test_compare_answers_both_formats(fmt: Any) -> None:
    live = fmt([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    assert compare_answers(live=live, shadow=live, tolerance=0.05) == "agree"
    close = fmt([0, 1], [[0.86, 0.14], [0.24, 0.76]])
    assert compare_answers(live=live, shadow=close, tolerance=0.05) == "agree"
    far = fmt([0, 1], [[0.8, 0.2], [0.2, 0.8]])
    assert compare_answers(live=live, shadow=far, tolerance=0.05) == "disagree"
    assert compare_answers(live=live, shadow=far, tolerance=0.1) == "agree"
    other_class = fmt([0, 0], [[0.9, 0.1], [0.2, 0.8]])
    assert compare_answers(live=live, shadow=other_class, tolerance=0.05) == "disagree"
    fewer_rows = fmt([0], [[0.9, 0.1]])
    assert compare_answers(live=live, shadow=fewer_rows, tolerance=0.05) == "disagree"


def test_compare_answers_exact_tolerance_agrees() -> None:
    live, shadow = _predict([0], [[0.5, 0.5]]), _predict([0], [[0.55, 0.45]])
    assert compare_answers(live=live, shadow=shadow, tolerance=0.05) == "agree"


def test_compare_labels_only_and_across_formats() -> None:
    assert compare_answers(live=_predict([1, 0]), shadow=_predict([1, 0]), tolerance=0) == "agree"
    assert compare_answers(live=_v2([1, 0]), shadow=_v2([1, 1]), tolerance=0) == "disagree"
    # Probabilities on one side only: the classes decide.
    mixed = compare_answers(live=_predict([1], [[0.3, 0.7]]), shadow=_v2([1]), tolerance=0.05)
    assert mixed == "agree"
    # String labels.
    assert compare_answers(live=_v2(["a"]), shadow=_predict(["a"]), tolerance=0) == "agree"


def test_compare_probabilities_only_uses_the_most_probable_class() -> None:
    live = _v2(None, [[0.9, 0.1]])
    assert compare_answers(live=live, shadow=_v2(None, [[0.88, 0.12]]), tolerance=0.05) == "agree"
    assert compare_answers(live=live, shadow=_v2(None, [[0.4, 0.6]]), tolerance=0.6) == "disagree"


@pytest.mark.parametrize(
    "shadow",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"detail": [{"msg": "bad"}]}',
        b'{"outputs": "x"}',
        b'{"outputs": [{"name": "predict_proba", "shape": [1, 3], "data": [0.5, 0.5]}]}',
        b'{"predictions": 3}',
        b'{"predictions": [1], "probabilities": [0.5]}',
    ],
)
def test_unreadable_answers_are_errors(shadow: bytes) -> None:
    live = _predict([1], [[0.2, 0.8]])
    assert compare_answers(live=live, shadow=shadow, tolerance=0.05) == "error"
    assert compare_answers(live=shadow, shadow=live, tolerance=0.05) == "error"


def test_nan_probabilities_disagree() -> None:
    live = _predict([1], [[0.2, 0.8]])
    nan = b'{"predictions": [1], "probabilities": [[NaN, 0.8]]}'
    assert compare_answers(live=live, shadow=nan, tolerance=0.05) in ("disagree", "error")


def test_parse_answer_reshapes_v2_probabilities() -> None:
    answer = parse_answer(_v2([0, 1], [[0.9, 0.1], [0.3, 0.7]]))
    assert answer.labels == [0, 1]
    assert answer.probabilities == [[0.9, 0.1], [0.3, 0.7]]


# --- the table from a ModelDeployment ----------------------------------------------------------


def _object(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    return {
        "apiVersion": "canaryml.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"model": {"uri": "s3://m/1", "version": "1.0.0"}, **spec},
        "status": status,
    }


def test_table_of_a_stable_only_object() -> None:
    table = table_from_model_deployment(_object(status={"canaryWeight": 30}))
    assert table.upstreams == {"stable": "http://iris-stable"}
    assert table.canary_weight == 0  # no spec.canary: the status' weight is stale
    assert table.shadow_percent == 0
    assert table.sticky_header is None
    assert table.versions == {"stable": "1.0.0"}
    assert table.probability_tolerance == 0.05


def test_table_of_a_full_object() -> None:
    obj = _object(
        canary={"model": {"uri": "s3://m/2", "version": "1.1.0"}, "steps": [10, 50]},
        shadow={"model": {"uri": "s3://m/3", "version": "2.0.0"}, "percent": 40,
                "probabilityTolerance": 0.1},
        routing={"router": "builtin", "stickyHeader": "x-user-id"},
        status={"canaryWeight": 10, "stableVersion": "0.9.0", "phase": "Progressing",
                "canaryModel": {"uri": "s3://m/2", "version": "1.1.0"}},
    )  # fmt: skip
    table = table_from_model_deployment(obj)
    assert table.upstreams == {
        track: service_url("iris", track) for track in ("stable", "canary", "shadow")
    }
    assert table.canary_weight == 10
    assert table.shadow_percent == 40
    assert table.sticky_header == "x-user-id"
    assert table.probability_tolerance == 0.1
    assert table.versions == {"stable": "0.9.0", "canary": "1.1.0", "shadow": "2.0.0"}
    assert table.canary_active and table.shadow_active


def test_table_defaults_and_overrides() -> None:
    obj = _object(
        canary={"model": {"uri": "s3://m/2", "version": "1.1.0"}},
        shadow={"model": {"uri": "s3://m/3", "version": "2.0.0"}},
    )
    overrides = {"stable": "http://127.0.0.1:1", "shadow": "http://127.0.0.1:3"}
    table = table_from_model_deployment(obj, upstreams=overrides)
    assert table.canary_weight == 0  # no status yet
    assert table.shadow_percent == 100  # the CRD's default
    assert table.upstreams == {**overrides, "canary": "http://iris-canary"}
    # An override for a track the object does not have adds nothing.
    alone = table_from_model_deployment(_object(), upstreams={"canary": "http://x"})
    assert alone.upstreams == {"stable": "http://iris-stable"}


@pytest.mark.parametrize(
    "obj",
    [
        {"spec": {}},
        {"metadata": {"name": "x"}, "spec": "nope"},
        {"metadata": {"name": "x"}, "spec": {"model": {}, "canary": {"model": {}}},
         "status": {"canaryWeight": "10"}},
        {"metadata": {"name": "x"}, "spec": {"model": {}, "shadow": {"percent": 500}}},
        {"metadata": {"name": "x"}, "spec": {"model": {}, "shadow": {"probabilityTolerance": "a"}}},
    ],
)  # fmt: skip
def test_unreadable_objects_raise_value_error(obj: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        table_from_model_deployment(obj)


def test_table_validation() -> None:
    with pytest.raises(ValueError, match="stable"):
        RoutingTable(upstreams={"canary": "http://c"})
    with pytest.raises(ValueError, match=r"0\.\.100"):
        RoutingTable(upstreams={"stable": "http://s"}, canary_weight=101)
    with pytest.raises(ValueError, match="unknown track"):
        RoutingTable(upstreams={"stable": "http://s", "blue": "http://b"})


def test_follow_constants_match_the_operator_api() -> None:
    from canaryml_api import resource as api
    from canaryml_router import follow as router_follow

    assert (router_follow.GROUP, router_follow.VERSION, router_follow.PLURAL) == (
        api.GROUP,
        api.VERSION,
        api.PLURAL,
    )


# --- settings --------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARYML_MODEL_DEPLOYMENT", "iris")
    monkeypatch.setenv("CANARYML_NAMESPACE", "ml")
    monkeypatch.setenv("CANARYML_ROUTER_UPSTREAMS", "stable=http://a:1, canary=http://b:2")
    monkeypatch.setenv("CANARYML_ROUTER_VERSIONS", "stable=1.0.0")
    monkeypatch.setenv("CANARYML_ROUTER_CANARY_WEIGHT", "20")
    monkeypatch.setenv("CANARYML_ROUTER_STICKY_HEADER", "x-user-id")
    monkeypatch.setenv("CANARYML_ROUTER_ADMIN", "true")
    monkeypatch.setenv("CANARYML_ROUTER_ADMIN_PORT", "9091")
    settings = RouterSettings.model_validate({})
    assert settings.admin_port == 9091 and settings.admin_host == "127.0.0.1"
    assert settings.model_deployment == "iris"
    assert settings.namespace == "ml"
    assert settings.upstreams == {"stable": "http://a:1", "canary": "http://b:2"}
    assert settings.admin
    table = settings.static_table()
    assert table.canary_weight == 20
    assert table.versions == {"stable": "1.0.0"}
    assert table.sticky_header == "x-user-id"


def test_settings_from_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARYML_MODEL_DEPLOYMENT", "iris")
    settings = RouterSettings.model_validate(
        {"model_deployment": "other", "upstreams": ["stable=http://x"], "port": 9}
    )
    assert (settings.model_deployment, settings.port) == ("other", 9)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"upstreams": ["stable=http://x"]}, "--model-deployment NAME"),
        ({"model_deployment": "m"}, "--upstream stable=URL"),
        ({"model_deployment": "m", "upstreams": ["blue=http://x"]}, "stable, canary or shadow"),
        ({"model_deployment": "m", "upstreams": ["stable"]}, "TRACK=VALUE"),
        ({"model_deployment": "m", "upstreams": ["stable=ftp://x"]}, "http"),
        ({"model_deployment": "m", "upstreams": ["stable=http://x"], "canary_weight": 5},
         "--upstream canary=URL"),
        ({"model_deployment": "m", "follow": True, "admin": True}, "--admin"),
        ({"model_deployment": "m", "upstreams": ["stable=http://x"], "admin": True},
         "--admin-port"),
        ({"model_deployment": "m", "upstreams": ["stable=http://x"], "admin_upstreams": True},
         "--admin-upstreams needs --admin"),
        ({"model_deployment": "m", "upstreams": ["stable=http://x"], "port": 9000,
          "admin_port": 9000}, "must differ"),
        ({"model_deployment": "m", "upstreams": ["stable=http://x"], "canary_weight": 101},
         "less than or equal"),
    ],
)  # fmt: skip
def test_bad_settings_say_what_is_wrong(
    values: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANARYML_MODEL_DEPLOYMENT", raising=False)
    with pytest.raises(ValidationError) as error:
        RouterSettings.model_validate(values)
    assert message in str(error.value)


def test_follow_needs_no_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = RouterSettings.model_validate({"model_deployment": "m", "follow": True})
    assert settings.follow and settings.upstreams == {}
