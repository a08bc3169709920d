"""spec.registry: what the operator writes back to the model registry (the pure core), the
registry's URL and token in the model servers' pods, and the spec's validation. The REST calls
against a real MLflow server are in tests/integration/test_mlflow.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import children, writeback
from canaryml_operator.state import Owner

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
OWNER = Owner(name="iris", namespace="ml", uid="0b6c1f5e-1111-4222-8333-944455556666")
TRACKING = "http://mlflow.ml:5000"


def spec(**registry: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec(
        {
            "model": {"uri": "models:/iris/1", "version": "1", "sha256": "c" * 64},
            "canary": {"model": {"uri": "models:/iris@challenger", "version": "2"}},
            "routing": {"router": "none"},
            "registry": {"mlflow": {"trackingUri": TRACKING}, **registry},
        }
    )


def entry(event: str, uri: str, minute: int, reason: str = "") -> api.HistoryEntry:
    return api.HistoryEntry(
        version="x", uri=uri, event=event,  # type: ignore[arg-type]
        time=T0 + timedelta(minutes=minute), reason=reason,
    )  # fmt: skip


def status(*entries: api.HistoryEntry, **fields: Any) -> api.ModelDeploymentStatus:
    return api.ModelDeploymentStatus(history=list(entries), **fields)


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("models:/iris/3", writeback.Target("iris", version="3")),
        ("models:/iris@champion", writeback.Target("iris", alias="champion")),
        ("models:/iris/3/", writeback.Target("iris", version="3")),
        ("runs:/0123abc/model", None),
        ("s3://models/iris/3", None),
        ("models:/iris", None),
        ("models:/iris/3/extra", None),
    ],
)
def test_the_registry_version_a_uri_names(uri: str, target: writeback.Target | None) -> None:
    assert writeback.target_of(uri) == target


def test_nothing_is_due_without_spec_registry_or_without_history() -> None:
    plain = api.parse_spec({"model": {"uri": "models:/iris/1", "version": "1"}})
    assert writeback.due(plain, status(entry("promoted", "models:/iris/2", 1))) == []
    assert writeback.due(spec(onPromote={"alias": "champion"}), status()) == []


def test_the_first_time_only_the_latest_outcome_is_due() -> None:
    history = status(
        entry("promoted", "models:/iris/2", 1),
        entry("rolledBack", "models:/iris/3", 2, "error rate"),
        entry("promoted", "models:/iris/4", 3),
    )
    [write] = writeback.due(spec(onPromote={"alias": "champion"}, onRollback={}), history)
    assert (write.event, write.uri, write.action) == (
        "promoted",
        "models:/iris/4",
        "alias champion",
    )
    assert write.target == writeback.Target("iris", version="4")


def test_a_rollback_is_tagged_with_its_reason_and_a_promotion_can_set_a_stage() -> None:
    history = status(entry("rolledBack", "models:/iris@challenger", 1, "latency p99 0.4 > 0.2"))
    [write] = writeback.due(spec(onRollback={"tag": "canaryml.rollback"}), history)
    assert (write.kind, write.name, write.value) == (
        "tag",
        "canaryml.rollback",
        "latency p99 0.4 > 0.2",
    )
    promoted = status(entry("promoted", "models:/iris/2", 1))
    configured = spec(onPromote={"stage": "Production", "archiveExistingVersions": True})
    [stage] = writeback.due(configured, promoted)
    assert (stage.action, stage.archive_existing) == ("stage Production", True)


def test_an_outcome_without_its_action_in_the_spec_writes_nothing() -> None:
    history = status(entry("rolledBack", "models:/iris/2", 1, "bad"))
    assert writeback.due(spec(onPromote={"alias": "champion"}), history) == []


def test_a_written_outcome_is_not_due_again_and_newer_ones_are() -> None:
    configured = spec(onPromote={"alias": "champion"}, onRollback={})
    first = status(entry("promoted", "models:/iris/2", 1))
    [write] = writeback.due(configured, first)
    done = writeback.Outcome(done=True, result="ok", registry_version="2")
    records = writeback.record([], write, done, T0)
    assert writeback.due(configured, first.model_copy(update={"registry_writes": records})) == []
    later = status(
        entry("promoted", "models:/iris/2", 1),
        entry("rolledBack", "models:/iris/3", 2, "drift"),
        entry("promoted", "models:/iris/4", 3),
        registry_writes=records,
    )
    assert [w.uri for w in writeback.due(configured, later)] == ["models:/iris/3", "models:/iris/4"]


def test_a_failed_write_is_due_again_until_it_gives_up() -> None:
    configured = spec(onRollback={})
    current = status(entry("rolledBack", "models:/iris/2", 1, "bad"))
    failed = writeback.Outcome(done=False, result="MLflow at x is unreachable")
    for attempt in range(1, writeback.MAX_ATTEMPTS + 1):
        [write] = writeback.due(configured, current)
        records = writeback.record(current.registry_writes, write, failed, T0)
        current = current.model_copy(update={"registry_writes": records})
        assert current.registry_writes[0].attempts == attempt
    assert writeback.due(configured, current) == []
    assert current.registry_writes[0].last_result.endswith(
        f"(gave up after {writeback.MAX_ATTEMPTS} attempts)"
    )


def test_a_uri_that_names_no_registry_version_is_skipped_once() -> None:
    [write] = writeback.due(
        spec(onPromote={"alias": "champion"}), status(entry("promoted", "runs:/abc/model", 1))
    )
    outcome = writeback.unwritable(write)
    assert outcome is not None and outcome.done and outcome.result.startswith("skipped: ")


def test_the_records_are_bounded() -> None:
    records: list[api.RegistryWrite] = []
    configured = spec(onPromote={"alias": "champion"})
    for minute in range(writeback.MAX_RECORDS + 5):
        [write] = writeback.due(configured, status(entry("promoted", "models:/iris/2", minute)))
        records = writeback.record(records, write, writeback.Outcome(True, "ok"), T0)
    assert len(records) == writeback.MAX_RECORDS
    assert records[-1].history_time == T0 + timedelta(minutes=writeback.MAX_RECORDS + 4)


def test_the_model_servers_get_the_tracking_uri_and_the_token_from_its_secret() -> None:
    configured = spec(onPromote={"alias": "champion"})
    with_token = api.parse_spec(
        {
            **configured.model_dump(by_alias=True, exclude_none=True),
            "registry": {
                "mlflow": {
                    "trackingUri": TRACKING,
                    "tokenSecretRef": {"name": "mlflow", "key": "token"},
                }
            },
        }
    )
    manifests = children.build_children(owner=OWNER, spec=with_token, image="img")
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert len(deployments) == 2  # stable and canary
    for deployment in deployments:
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        by_name = {item["name"]: item for item in env}
        assert by_name["MLFLOW_TRACKING_URI"]["value"] == TRACKING
        assert by_name["MLFLOW_TRACKING_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "mlflow", "key": "token"}
        }
    plain = api.parse_spec(
        {"model": {"uri": "models:/iris/1", "version": "1"}, "routing": {"router": "none"}}
    )
    [stable] = [m for m in children.build_children(owner=OWNER, spec=plain, image="img")
                if m["kind"] == "Deployment"]  # fmt: skip
    names = {item["name"] for item in stable["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MLFLOW_TRACKING_URI" not in names


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({"onPromote": {}}, "onPromote sets alias or stage"),
        ({"onPromote": {"alias": "a", "stage": "Production"}}, "onPromote sets alias or stage"),
        ({"onPromote": {"alias": "latest"}}, "reserved by MLflow"),
        ({"onPromote": {"alias": "v2"}}, "reserved by MLflow"),
        ({"onPromote": {"stage": "Live"}}, "Staging"),
        ({"onRollback": {"tag": "bad\ntag"}}, "pattern"),
        ({"mlflow": {"trackingUri": "ftp://x"}}, "pattern"),
    ],
)
def test_an_invalid_registry_spec_says_what_is_wrong(
    registry: dict[str, Any], message: str
) -> None:
    body = {"model": {"uri": "models:/iris/1", "version": "1"},
            "registry": {"mlflow": {"trackingUri": TRACKING}, **registry}}  # fmt: skip
    with pytest.raises(ValueError, match=message) as refused:
        api.parse_spec(body)
    assert "spec.registry" in str(refused.value)


@pytest.mark.parametrize("uri", ["models:/iris@champion", "runs:/0123abc/model"])
def test_alias_and_run_uris_are_model_uris(uri: str) -> None:
    assert api.ModelRef(uri=uri, version="1").uri == uri


def test_the_models_asked_about_before_their_tracks_are_made() -> None:
    configured = api.parse_spec(
        {
            **spec(onRollback={}).model_dump(by_alias=True, exclude_none=True),
            "shadow": {"model": {"uri": "runs:/abc/model", "version": "3"}},
        }
    )
    assert writeback.registry_models(configured) == [
        ("spec.model.uri", "models:/iris/1", writeback.Target("iris", version="1")),
        (
            "spec.canary.model.uri",
            "models:/iris@challenger",
            writeback.Target("iris", alias="challenger"),
        ),
    ]
    plain = api.parse_spec({"model": {"uri": "models:/iris/1", "version": "1"}})
    assert writeback.registry_models(plain) == []  # without spec.registry: never asked
