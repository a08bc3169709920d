"""A/B experiments (spec.canary.experiment): the spec, the statistics' decisions
(`experiments`), the rollout core driven through `decide()` with a clock, and the queries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from canaryml_api import resource as api
from canaryml_operator import checks, experiments
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Sample

from tests.unit.test_rollout import (
    ABORT,
    BAD_ERRORS,
    CANARY_UP,
    PROMOTE,
    Run,
    condition,
    raw_spec,
    reasons,
    roundtrip,
)


def experiment_spec(**experiment: Any) -> api.ModelDeploymentSpec:
    raw = raw_spec()
    raw["canary"]["experiment"] = experiment
    return api.parse_spec(raw)


def counts(
    canary: tuple[float, float], stable: tuple[float, float]
) -> dict[str, float | Sample | None]:
    """An analysis's experiment counts: (successes, samples) per track."""
    return {
        m.experiment_name("canary", "successes"): canary[0],
        m.experiment_name("canary", "samples"): canary[1],
        m.experiment_name("stable", "successes"): stable[0],
        m.experiment_name("stable", "samples"): stable[1],
    }


def started(**experiment: Any) -> Run:
    run = Run(experiment_spec(**experiment))
    run.start()
    return run


# ---------------------------------------------------------------------------------------------
# The spec


def test_the_experiment_spec_defaults_to_accuracy_at_half_the_traffic() -> None:
    spec = experiment_spec()
    assert spec.canary is not None and spec.canary.experiment is not None
    experiment = spec.canary.experiment
    assert (experiment.metric, experiment.weight, experiment.min_samples) == ("accuracy", 50, 100)
    assert experiment.min_effect is None


def test_accuracy_takes_no_queries_and_a_business_metric_needs_both() -> None:
    with pytest.raises(ValueError, match="comes from the feedback labels"):
        experiment_spec(successQuery="x")
    with pytest.raises(ValueError, match="set successQuery and totalQuery"):
        experiment_spec(metric="checkout", successQuery="x")
    spec = experiment_spec(metric="checkout", successQuery="s", totalQuery="t", weight=20)
    assert spec.canary is not None and spec.canary.experiment is not None
    assert spec.canary.experiment.weight == 20


@pytest.mark.parametrize(
    "field", [{"weight": 0}, {"weight": 100}, {"minEffect": 0}, {"minSamples": 0}]
)
def test_out_of_range_experiment_fields_are_refused(field: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        experiment_spec(**field)


# ---------------------------------------------------------------------------------------------
# The statistics


@pytest.mark.parametrize(
    ("low", "high", "min_effect", "winner"),
    [
        (0.01, 0.05, None, "canary"),
        (-0.05, -0.01, None, "stable"),
        (-0.01, 0.02, None, "undecided"),
        (-0.01, 0.02, 0.03, "none"),
        (-0.01, 0.04, 0.03, "undecided"),
        (0.0, 0.02, None, "undecided"),  # 0 still inside
    ],
)
def test_the_winner_is_the_side_of_zero_the_interval_lies_on(
    low: float, high: float, min_effect: float | None, winner: str
) -> None:
    assert experiments.decide_winner(low, high, min_effect=min_effect) == winner


def test_the_difference_interval_holds_both_rates_and_narrows_with_samples() -> None:
    low, high = experiments.difference_bounds(90, 100, 95, 100, 0.01)
    assert low < -0.05 < high and low < 0 < high  # 100 labels each: not enough
    low, high = experiments.difference_bounds(9000, 10000, 9500, 10000, 0.01)
    assert float(high) < 0  # 10,000 each: the stable's 5 points are evident
    assert float(low) < -0.05 < float(high)
    low, high = experiments.difference_bounds(0, 0, 0, 0, 0.01)
    assert (float(low), float(high)) == (-1.0, 1.0)


def test_equal_tracks_rarely_name_a_winner_over_many_looks() -> None:
    """Seeded paths of equal tracks (90 % each) looked at every 50 samples up to 5,000: the
    share of paths that ever name a winner stays under alpha (always-valid)."""
    rng = np.random.default_rng(7)
    paths, looks, each = 400, 100, 50
    canary = rng.binomial(each, 0.9, size=(paths, looks)).cumsum(axis=1)
    stable = rng.binomial(each, 0.9, size=(paths, looks)).cumsum(axis=1)
    n = np.arange(1, looks + 1) * each
    low, high = experiments.difference_bounds(canary, n, stable, n, 0.05)
    named = (experiments.winner_codes(low, high) != experiments.UNDECIDED).any(axis=1)
    assert named.mean() <= 0.05


# ---------------------------------------------------------------------------------------------
# The rollout core


def test_the_canary_takes_the_fixed_weight_and_the_experiment_starts() -> None:
    run = Run(experiment_spec(weight=30))
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    status = decision.status
    assert (decision.action, status.canary_weight, status.current_step) == ("stepUp", 30, 0)
    assert status.experiment is not None
    assert (status.experiment.metric, status.experiment.canary_version) == ("accuracy", "1.1.0")
    assert status.experiment.started_at == run.now
    assert status.experiment.winner == "undecided"
    assert "A/B experiment on accuracy started at weight 30%" in decision.events[0].message
    assert roundtrip(status).experiment == status.experiment


def test_passing_analyses_never_step_up_nor_promote() -> None:
    run = started()
    for _ in range(20):
        decision = run.analyse(counts((60, 100), (58, 100)), after=60, tracks=CANARY_UP)
        assert decision.action == "pass"
        assert (run.status.canary_weight, run.status.phase) == (50, "Progressing")
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == experiments.RUNNING_REASON
    assert "not decided yet" in progressing.message


def test_a_decided_experiment_names_the_winner_once_and_still_does_not_promote() -> None:
    run = started()
    run.analyse(counts((50, 100), (50, 100)), after=30, tracks=CANARY_UP)
    decision = run.analyse(counts((1900, 2000), (1700, 2000)), after=60, tracks=CANARY_UP)
    record = decision.status.experiment
    assert record is not None
    assert record.winner == "canary"
    assert record.decided_at == run.now
    assert record.effect == pytest.approx(0.10)
    assert record.low is not None and record.high is not None
    assert 0 < record.low < 0.10 < record.high
    assert (record.canary_samples, record.stable_samples) == (2000, 2000)
    assert reasons(decision) == [experiments.DECIDED_REASON]
    assert "the canary wins" in decision.events[0].message
    assert decision.action == "pass"
    decided_at = run.now
    # Later analyses keep the decision, post no second Event, and promote nothing.
    decision = run.analyse(counts((2900, 3000), (2650, 3000)), after=60, tracks=CANARY_UP)
    assert decision.status.experiment is not None
    assert decision.status.experiment.winner == "canary"
    assert decision.status.experiment.decided_at == decided_at
    assert reasons(decision) == []
    assert (decision.action, decision.status.canary_weight) == ("pass", 50)
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None and progressing.reason == experiments.DECIDED_REASON


def test_the_promote_command_promotes_the_experiment_canary() -> None:
    run = started()
    run.analyse(counts((1900, 2000), (1700, 2000)), after=30, tracks=CANARY_UP)
    decision = run.analyse(after=30, tracks=CANARY_UP, commands=PROMOTE)
    assert decision.action == "promote"
    assert decision.status.phase == "Promoted"
    assert decision.status.experiment is not None  # the result stays readable
    assert decision.status.experiment.winner == "canary"


def test_the_safety_checks_still_roll_the_experiment_back() -> None:
    run = started()
    run.analyse({**counts((50, 100), (50, 100)), **BAD_ERRORS}, after=30, tracks=CANARY_UP)
    decision = run.analyse(BAD_ERRORS, after=30, tracks=CANARY_UP)
    assert decision.action == "rollback"
    assert decision.status.phase == "RolledBack"


def test_abort_ends_an_experiment() -> None:
    run = started()
    decision = run.analyse(counts((50, 100), (50, 100)), after=30, commands=ABORT)
    assert decision.status.phase == "RolledBack"


def test_nothing_is_decided_below_min_samples() -> None:
    run = started(minSamples=500)
    decision = run.analyse(counts((400, 400), (0, 400)), after=30, tracks=CANARY_UP)
    record = decision.status.experiment
    assert record is not None and record.winner == "undecided"
    assert record.low is not None and record.low > 0  # the interval is shown all the same
    assert "minSamples 500 per track" in record.message
    decision = run.analyse(counts((500, 500), (0, 500)), after=30, tracks=CANARY_UP)
    assert decision.status.experiment is not None
    assert decision.status.experiment.winner == "canary"


def test_min_effect_decides_no_difference() -> None:
    run = started(minEffect=0.05)
    decision = run.analyse(counts((9000, 10000), (9010, 10000)), after=30, tracks=CANARY_UP)
    record = decision.status.experiment
    assert record is not None and record.winner == "none"
    assert "no difference of 5 points or more" in record.message


def test_the_interval_never_widens() -> None:
    run = started()
    run.analyse(counts((900, 1000), (900, 1000)), after=30, tracks=CANARY_UP)
    before = run.status.experiment
    assert before is not None and before.low is not None and before.high is not None
    # Counts that alone would give a wider interval (a counter reset): the intersection holds.
    run.analyse(counts((90, 100), (90, 100)), after=30, tracks=CANARY_UP)
    after = run.status.experiment
    assert after is not None and after.low is not None and after.high is not None
    assert (after.low, after.high) == (before.low, before.high)


@pytest.mark.parametrize(
    ("sample", "said"),
    [
        (Sample.failed("prometheus unreachable"), "prometheus unreachable"),
        (None, "no canary successes since the experiment began yet"),
        (-3.0, "is not a count"),
    ],
)
def test_missing_counts_decide_nothing_and_say_why(
    sample: Sample | float | None, said: str
) -> None:
    run = started()
    overrides = {**counts((400, 400), (0, 400)), m.experiment_name("canary", "successes"): sample}
    decision = run.analyse(overrides, after=30, tracks=CANARY_UP)
    record = decision.status.experiment
    assert record is not None and record.winner == "undecided"
    assert said in record.message


def test_an_experiment_added_to_a_running_canary_starts_at_its_weight() -> None:
    """The spec gains an experiment mid-rollout: the next analysis moves the canary to the
    experiment's weight and starts counting from then."""
    run = Run(api.parse_spec(raw_spec()))
    run.to_step(1)
    run.spec = experiment_spec(weight=40)
    decision = run.analyse(after=30, tracks=CANARY_UP)
    assert (decision.status.canary_weight, decision.status.current_step) == (40, 0)
    assert decision.status.experiment is not None
    assert decision.status.experiment.started_at == run.now


# ---------------------------------------------------------------------------------------------
# The queries


def query_status(spec: api.ModelDeploymentSpec, **record: Any) -> api.ModelDeploymentStatus:
    run = Run(spec)
    run.start()
    assert run.status.experiment is not None
    return run.status.model_copy(
        update={"experiment": run.status.experiment.model_copy(update=record)}
    )


def test_accuracy_queries_count_both_tracks_labels_since_the_experiment_began() -> None:
    spec = experiment_spec()
    status = query_status(spec)
    assert status.experiment is not None
    at = status.experiment.started_at + timedelta(minutes=5)
    queries = checks.build_queries(
        spec=spec, name="iris", namespace="ml", source="router", status=status, at=at
    )
    since = f"@ {status.experiment.started_at.timestamp():.3f}"
    for track, version in (("canary", "1.1.0"), ("stable", "1.0.0")):
        samples = queries[m.experiment_name(track, "samples")]
        successes = queries[m.experiment_name(track, "successes")]
        assert "canaryml_feedback_labels_total" in samples and since in samples
        assert "canaryml_feedback_correct_total" in successes and since in successes
        assert f'track="{track}"' in samples and f'version="{version}"' in samples


def test_business_queries_fill_the_placeholders() -> None:
    spec = experiment_spec(
        metric="checkout",
        successQuery='sum(increase(orders_total{track="{{track}}"}[{{ range }}]))',
        totalQuery='sum(increase(visits_total{track="{{track}}",version="{{version}}"}[{{range}}]))',
    )
    status = query_status(spec)
    assert status.experiment is not None
    at = status.experiment.started_at + timedelta(minutes=10)
    queries = checks.experiment_queries(
        spec=spec, name="iris", namespace=None, status=status, at=at
    )
    assert queries == {
        m.experiment_name(
            "canary", "successes"
        ): 'sum(increase(orders_total{track="canary"}[600s]))',
        m.experiment_name("canary", "samples"): (
            'sum(increase(visits_total{track="canary",version="1.1.0"}[600s]))'
        ),
        m.experiment_name(
            "stable", "successes"
        ): 'sum(increase(orders_total{track="stable"}[600s]))',
        m.experiment_name("stable", "samples"): (
            'sum(increase(visits_total{track="stable",version="1.0.0"}[600s]))'
        ),
    }


def test_no_experiment_queries_before_it_began_or_for_another_canary() -> None:
    spec = experiment_spec()
    status = query_status(spec)
    assert status.experiment is not None
    begun = status.experiment.started_at
    assert (
        checks.experiment_queries(spec=spec, name="i", namespace=None, status=status, at=begun)
        == {}
    )
    other = query_status(spec, canary_version="0.9.0")
    later = begun + timedelta(minutes=1)
    assert (
        checks.experiment_queries(spec=spec, name="i", namespace=None, status=other, at=later) == {}
    )
    plain: Mapping[str, str] = checks.build_queries(
        spec=api.parse_spec(raw_spec()), name="i", namespace=None, source="router",
        status=status, at=later,
    )  # fmt: skip
    assert not any("SinceExperiment" in key for key in plain)


# ---------------------------------------------------------------------------------------------
# `canaryml status`


def test_status_shows_the_experiment() -> None:
    import io

    from canaryml_operator.cli import render_status
    from rich.console import Console

    run = started(weight=30)
    run.analyse(counts((1900, 2000), (1700, 2000)), after=30, tracks=CANARY_UP)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [5, 25, 50], "experiment": {"weight": 30}}},
        "status": run.status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=300, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for shown in (
        "A/B experiment on accuracy at 30%",
        "1 of 1",
        "winner",
        "canary",
        "+10.00 points",
        "95.00 % (1900 of 2000)",
        "85.00 % (1700 of 2000)",
        "false winner rate",
    ):
        assert shown in text, shown


def test_a_decided_experiment_is_a_notification() -> None:
    from canaryml_operator import notifications

    run = started()
    before = run.status
    decision = run.analyse(counts((1900, 2000), (1700, 2000)), after=30, tracks=CANARY_UP)
    found = notifications.notices(previous=before, status=decision.status, events=decision.events)
    assert [notice.event for notice in found] == ["experimentDecided"]
    assert "the canary wins" in found[0].message
    assert "experimentDecided" in api.NOTIFICATION_EVENTS


def test_confirm_hooks_are_not_asked_during_an_experiment() -> None:
    """Nothing to confirm: an experiment never steps up nor promotes by itself. Hooks that
    tell (pre-rollout, rollback) are asked as for any rollout."""
    from canaryml_operator import hooks
    from canaryml_operator.state import Owner

    raw = raw_spec()
    raw["canary"]["experiment"] = {}
    raw["webhooks"] = [
        {"name": t, "type": t, "url": f"http://hooks.example/{t}"}
        for t in ("confirm-promotion", "confirm-traffic-increase", "rollback")
    ]
    run = Run(api.parse_spec(raw))
    run.start()
    owner = Owner(name="iris", namespace="models", uid="u-1")
    for _ in range(5):
        run.analyse(counts((1900, 2000), (1700, 2000)), after=30, tracks=CANARY_UP)
        assert hooks.due(spec=run.spec, status=run.status, owner=owner, now=run.now) == []
    assert run.status.experiment is not None and run.status.experiment.winner == "canary"
    run.analyse(after=30, commands=ABORT)
    called = hooks.due(spec=run.spec, status=run.status, owner=owner, now=run.now)
    assert [call.hook.type for call in called] == ["rollback"]
