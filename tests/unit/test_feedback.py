"""Feedback without HTTP: the desk's verdict on each kind of bad input (a clear 4xx naming the
item and why), batches taken whole, duplicates counted once; the metrics it feeds; the key
settings."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import pytest
from canaryml_api.telemetry import (
    FEEDBACK_ABSOLUTE_ERROR_TOTAL,
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_DELAY,
    FEEDBACK_LABELS_TOTAL,
    FEEDBACK_REJECT_REASONS,
    FEEDBACK_REJECTED_TOTAL,
    FEEDBACK_SQUARED_ERROR_TOTAL,
)
from canaryml_server.feedback import FeedbackDesk, FeedbackRefused
from canaryml_server.metrics import FeedbackMetrics
from canaryml_server.prediction_ids import IdIssuer, IdVerifier
from canaryml_server.settings import ServerSettings
from prometheus_client import CollectorRegistry

KEY = b"k" * 32
NOW = 1_800_000_000_000
DAY_MS = 86_400_000
LABELS = {"model_deployment": "shop", "track": "stable", "version": "2"}


def _ids(labels: list[Any], *, track: str = "canary", key: bytes = KEY, **kw: Any) -> list[str]:
    issuer = IdIssuer(
        key,
        deployment=kw.pop("deployment", "shop"),
        track=track,
        version="1.1.0",
        regression=kw.pop("regression", False),
    )
    return issuer.issue(labels, now_ms=kw.pop("now_ms", NOW))


def _desk(*, regression: bool = False, **overrides: Any) -> FeedbackDesk:
    values: dict[str, Any] = {
        "regression": regression,
        "classes": None if regression else [0, 1],
        "max_items": 10,
        "dedup_size": 100,
    }
    values.update(overrides)
    verifier = IdVerifier([KEY], deployment="shop", max_age_ms=7 * DAY_MS)
    return FeedbackDesk(verifier, **values)


def _refusal(desk: FeedbackDesk, payload: Any, *, now_ms: int = NOW) -> FeedbackRefused:
    with pytest.raises(FeedbackRefused) as refused:
        desk.receive(payload, now_ms=now_ms)
    return refused.value


def test_one_item_and_a_batch_are_accepted_under_the_ids_track_and_version() -> None:
    desk = _desk()
    [one] = _ids([1])
    receipt = desk.receive({"id": one, "label": 1}, now_ms=NOW + 5000)
    assert receipt.as_json() == {"accepted": 1, "duplicates": 0}
    [item] = receipt.labelled
    assert (item.track, item.version, item.correct, item.delay_seconds) == (
        "canary",
        "1.1.0",
        True,
        5.0,
    )
    ids = _ids([0, 1, 1], track="stable")
    batch = [{"id": ids[0], "label": 0}, {"id": ids[1], "label": 0}, {"id": ids[2], "label": 1.0}]
    receipt = desk.receive({"feedback": batch}, now_ms=NOW)
    assert [i.correct for i in receipt.labelled] == [True, False, True]
    assert {i.track for i in receipt.labelled} == {"stable"}


def test_duplicates_count_once_in_a_batch_and_across_requests() -> None:
    desk = _desk()
    a, b = _ids([1, 0])
    first = desk.receive({"feedback": [{"id": a, "label": 1}, {"id": a, "label": 0}]}, now_ms=NOW)
    assert first.as_json() == {"accepted": 1, "duplicates": 1}
    again = desk.receive({"feedback": [{"id": a, "label": 1}, {"id": b, "label": 0}]}, now_ms=NOW)
    assert again.as_json() == {"accepted": 1, "duplicates": 1}
    assert desk.receive({"id": b, "label": 0}, now_ms=NOW).as_json()["duplicates"] == 1


def _moved(token: str, position: int) -> str:
    """The id with its (unsigned) position in its chunk changed."""
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[1] = position
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def test_an_id_moved_to_another_row_of_its_label_is_that_rows_and_counts_once() -> None:
    desk = _desk()
    a, b, c = _ids([1, 0, 1])
    # `a` moved to row 2 (also predicted 1) is `c`: the same prediction, counted once.
    first = desk.receive({"feedback": [{"id": c, "label": 1}, {"id": _moved(a, 2), "label": 1}]},
                         now_ms=NOW)  # fmt: skip
    assert first.as_json() == {"accepted": 1, "duplicates": 1}
    # Moved to row 1, predicted 0: the signature does not vouch for it.
    refused = _refusal(desk, {"id": _moved(a, 1), "label": 1})
    assert refused.status_code == 403 and set(refused.reasons) == {"tampered"}
    assert desk.receive({"id": b, "label": 0}, now_ms=NOW).as_json()["accepted"] == 1


def test_the_remembered_ids_are_bounded() -> None:
    desk = _desk(dedup_size=2)
    a, b, c = _ids([1, 1, 1])
    for token in (a, b, c):
        desk.receive({"id": token, "label": 1}, now_ms=NOW)
    # `a` was forgotten (the oldest of three, two remembered): counted again; `c` is not.
    assert desk.receive({"id": a, "label": 1}, now_ms=NOW).as_json()["accepted"] == 1
    assert desk.receive({"id": c, "label": 1}, now_ms=NOW).as_json()["duplicates"] == 1


def test_a_batch_is_taken_whole_or_not_at_all() -> None:
    desk = _desk()
    good, other = _ids([1, 0])
    refused = _refusal(desk, {"feedback": [{"id": good, "label": 1}, {"id": other, "label": 5}]})
    assert refused.status_code == 422
    assert [p.loc for p in refused.problems] == [("feedback", 1, "label")]
    # Nothing of the refused batch was counted, not even its good item.
    assert desk.receive({"id": good, "label": 1}, now_ms=NOW).as_json()["accepted"] == 1


def _tampered(token: str) -> str:
    swap = "A" if token[-3] != "A" else "B"
    return token[:-3] + swap + token[-2:]


@pytest.mark.parametrize(
    ("case", "status", "reason", "message"),
    [
        ("tampered", 403, "tampered", "signature does not match"),
        ("unknown_key", 403, "unknown_key", "unknown key"),
        ("other_deployment", 403, "other_deployment", "another model deployment"),
        ("malformed", 422, "malformed", "not a prediction id"),
        ("expired", 422, "expired", "over the allowed"),
        ("not_a_class", 422, "label", "not one of the model's classes: 0, 1"),
        ("string_for_int_class", 422, "label", "not one of the model's classes"),
        ("bool_for_int_class", 422, "label", "not one of the model's classes"),
        ("no_label", 422, "body", "send the true outcome"),
        ("both", 422, "body", "send the true outcome"),
        ("extra_field", 422, "body", "Extra inputs are not permitted"),
        ("id_not_text", 422, "body", "valid string"),
        ("label_not_scalar", 422, "body", "valid"),
        ("not_an_object", 422, "body", "valid dictionary"),
        ("empty_batch", 422, "body", "at least 1 item"),
        ("too_many", 413, "too_many", "over the limit of 10"),
    ],
)
def test_each_bad_feedback_is_a_clear_4xx(
    case: str, status: int, reason: str, message: str
) -> None:
    desk = _desk()
    [token] = _ids([1])
    payloads: dict[str, Any] = {
        "tampered": {"id": _tampered(token), "label": 1},
        "unknown_key": {"id": _ids([1], key=b"o" * 32)[0], "label": 1},
        "other_deployment": {"id": _ids([1], deployment="elsewhere")[0], "label": 1},
        "malformed": {"id": "not-an-id", "label": 1},
        "expired": {"id": _ids([1], now_ms=NOW - 8 * DAY_MS)[0], "label": 1},
        "not_a_class": {"id": token, "label": 2},
        "string_for_int_class": {"id": token, "label": "1"},
        "bool_for_int_class": {"id": token, "label": True},
        "no_label": {"id": token},
        "both": {"id": token, "label": 1, "value": 1},
        "extra_field": {"id": token, "label": 1, "features": [1, 2]},
        "id_not_text": {"id": 12, "label": 1},
        "label_not_scalar": {"id": token, "label": [1]},
        "not_an_object": [token, 1],
        "empty_batch": {"feedback": []},
        "too_many": {"feedback": [{"id": token, "label": 1}] * 11},
    }
    refused = _refusal(desk, payloads[case])
    assert refused.status_code == status
    assert message in str(refused), str(refused)
    assert set(refused.reasons) == {reason}
    assert reason in FEEDBACK_REJECT_REASONS


def test_a_batch_names_each_bad_item_and_authentication_wins() -> None:
    desk = _desk()
    a, b, c = _ids([1, 1, 1])
    batch = [
        {"id": a, "label": 1},
        {"id": _tampered(b), "label": 1},
        {"id": c, "label": "yes"},
    ]
    refused = _refusal(desk, {"feedback": batch})
    assert refused.status_code == 403
    assert [(p.loc, p.type) for p in refused.problems] == [
        (("feedback", 1, "id"), "tampered"),
        (("feedback", 2, "label"), "label"),
    ]


def test_regression_values_and_errors() -> None:
    desk = _desk(regression=True)
    ids = _ids([10.0, 20.0, 30.0], regression=True)
    receipt = desk.receive(
        {"feedback": [{"id": ids[0], "label": 12}, {"id": ids[1], "value": 17.5}]}, now_ms=NOW
    )
    assert [i.error for i in receipt.labelled] == [2.0, -2.5]
    assert all(i.correct is None for i in receipt.labelled)
    for bad, message in (
        ("12", "as a number"),
        (True, "as a number"),
        (math.inf, "finite"),
    ):
        refused = _refusal(desk, {"id": ids[2], "label": bad})
        assert refused.status_code == 422 and message in str(refused)
    [missing] = _ids([math.nan], regression=True)
    assert "missing" in str(_refusal(desk, {"id": missing, "label": 1.0}))
    # A classifier's id at a regressor's desk (same key and deployment name): refused.
    [classifier] = _ids([1])
    assert "another kind of model" in str(_refusal(desk, {"id": classifier, "label": 1.0}))


def test_string_classes() -> None:
    desk = _desk(classes=["setosa", "versicolor"])
    [token] = _ids(["setosa"])
    assert (
        desk.receive({"id": token, "label": "versicolor"}, now_ms=NOW).labelled[0].correct is False
    )
    assert "'setosa', 'versicolor'" in str(_refusal(desk, {"id": token, "label": "rose"}))


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def _get(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def test_metrics_count_under_the_ids_labels_and_rejections_by_reason() -> None:
    registry = CollectorRegistry()
    metrics = FeedbackMetrics(registry=registry, labels=LABELS, regression=False)
    desk = _desk()
    tokens = _ids([1, 1, 0], track="canary")
    metrics.labelled(
        desk.receive(
            {"feedback": [{"id": t, "label": 1} for t in tokens]}, now_ms=NOW + 90_000
        ).labelled
    )
    metrics.rejected(_refusal(desk, {"id": "junk", "label": 1}).reasons)
    samples = _samples(registry)
    canary = {"model_deployment": "shop", "track": "canary", "version": "1.1.0"}
    assert _get(samples, FEEDBACK_LABELS_TOTAL, **canary) == 3
    assert _get(samples, FEEDBACK_CORRECT_TOTAL, **canary) == 2
    assert _get(samples, f"{FEEDBACK_DELAY}_count", **canary) == 3
    assert _get(samples, f"{FEEDBACK_DELAY}_sum", **canary) == 270
    assert _get(samples, f"{FEEDBACK_DELAY}_bucket", le="60.0", **canary) == 0
    assert _get(samples, f"{FEEDBACK_DELAY}_bucket", le="300.0", **canary) == 3
    # The server's own series exist from the start, at 0; refusals under its own labels.
    assert (FEEDBACK_LABELS_TOTAL, tuple(sorted(LABELS.items()))) in samples
    assert _get(samples, FEEDBACK_REJECTED_TOTAL, reason="malformed", **LABELS) == 1
    assert _get(samples, FEEDBACK_REJECTED_TOTAL, reason="expired", **LABELS) == 0
    assert _get(samples, FEEDBACK_ABSOLUTE_ERROR_TOTAL) == 0


def test_regression_metrics_sum_absolute_and_squared_errors() -> None:
    registry = CollectorRegistry()
    metrics = FeedbackMetrics(registry=registry, labels=LABELS, regression=True)
    desk = _desk(regression=True)
    a, b = _ids([10.0, 20.0], regression=True)
    receipt = desk.receive(
        {"feedback": [{"id": a, "label": 13}, {"id": b, "label": 16}]}, now_ms=NOW
    )
    metrics.labelled(receipt.labelled)
    samples = _samples(registry)
    assert _get(samples, FEEDBACK_ABSOLUTE_ERROR_TOTAL, track="canary") == 7
    assert _get(samples, FEEDBACK_SQUARED_ERROR_TOTAL, track="canary") == 25
    assert _get(samples, FEEDBACK_LABELS_TOTAL, track="canary") == 2
    assert not any(name == FEEDBACK_CORRECT_TOTAL for name, _ in samples)


# --- settings ---------------------------------------------------------------------------------


def _settings(**values: Any) -> ServerSettings:
    return ServerSettings(model_uri="unused", **values)


def test_keys_from_settings_files_and_previous_keys(tmp_path: Path) -> None:
    assert _settings().feedback_keys() == []
    rotated = _settings(feedback_key="a" * 32, feedback_previous_keys=f" {'b' * 16}, {'c' * 16},")
    assert rotated.feedback_keys() == [b"a" * 32, b"b" * 16, b"c" * 16]
    current = tmp_path / "key"
    current.write_text("s" * 32 + "\n")
    previous = tmp_path / "previous"
    previous.write_text("p" * 20 + "\n" + "q" * 20 + "\n")
    settings = _settings(feedback_key_file=current, feedback_previous_keys_file=previous)
    assert settings.feedback_keys() == [b"s" * 32, b"p" * 20, b"q" * 20]
    assert "s" * 32 not in repr(_settings(feedback_key="s" * 32))  # a secret is never shown
    with pytest.raises(ValueError, match="not both"):
        _settings(feedback_key="a" * 32, feedback_key_file=current)
    with pytest.raises(ValueError, match="no current feedback key"):
        _settings(feedback_previous_keys="p" * 20)
    with pytest.raises(ValueError, match="at least 16"):
        _settings(feedback_key="short")
    with pytest.raises(ValueError, match="cannot read a feedback key file"):
        _settings(feedback_key_file=tmp_path / "missing")
    assert _settings().feedback_max_age == 7 * 86400
    assert (_settings().feedback_max_items, _settings().feedback_dedup_size) == (1000, 100_000)
