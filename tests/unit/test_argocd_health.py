"""The Argo CD health check (docs/argocd/modeldeployment-health.lua) over real statuses.

Each status is the one the operator writes: a ModelDeployment is driven through the operator's
own pure core as its handler does (`rollout.decide`, then `reconcile.build_status`, serialized
by `reconcile.status_patch`), with the live Deployments and the analyses' measurements a real
rollout would see. The script then runs as Argo CD runs it: a global `obj` holding the object,
numbers as floats (Argo CD's Lua is gopher-lua, Lua 5.1, whose numbers are all floats), no `os`,
`io` or module loading, and it must return a table with `status` and `message`. It runs under
Lua 5.1 and under lupa's default Lua.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_api import resource as api
from canaryml_api.tracks import Track
from canaryml_operator import measurements as m
from canaryml_operator import reconcile, rollout, state
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.state import DeploymentState

pytest.importorskip("lupa")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_PATH = ROOT / "docs" / "argocd" / "modeldeployment-health.lua"
SCRIPT = SCRIPT_PATH.read_text(encoding="utf-8")
DOC = ROOT / "docs" / "gitops.md"
CHUNK = "=modeldeployment-health.lua"  # the chunk's name in Lua's line hooks

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STABLE: dict[str, Any] = {"uri": "http://model-store/stable", "version": "1.0.0"}
CANARY: dict[str, Any] = {"uri": "http://model-store/canary", "version": "1.1.0"}
BAD: dict[str, Any] = {"uri": "http://model-store/bad", "version": "1.2.0"}
BASE_SPEC: dict[str, Any] = {
    "model": STABLE,
    "analysis": {"interval": "10s", "minRequests": 20, "failureLimit": 2},
    "routing": {"router": "builtin"},
}
# An analysis every check passes (shadow agreement 95 % against a minimum of 90 %).
GOOD: dict[str, float] = {
    m.REQUESTS: 120.0,
    m.ERROR_RATE: 0.0,
    m.LATENCY_P99: 0.05,
    m.DRIFT: 0.03,
    m.PREDICTION_DRIFT: 0.05,
    m.SHADOW_AGREEMENT: 0.95,
}

Body = dict[str, Any]


def with_canary(model: Mapping[str, Any], *, shadow: Mapping[str, Any], **extra: Any) -> Body:
    spec = copy.deepcopy(BASE_SPEC)
    spec["canary"] = {"model": dict(model), "steps": [20, 50], "stepInterval": "20s"}
    spec["shadow"] = {"model": dict(shadow), "probabilityTolerance": 0.3}
    spec.update(extra)
    return spec


def serving(model: Mapping[str, Any], *, ready: bool = True) -> DeploymentState:
    """A model Deployment as the operator reads it: rolled out (or not) with this artifact."""
    return DeploymentState(
        exists=True,
        desired=1,
        available=1 if ready else 0,
        updated=1,
        current=True,
        version=model["version"],
        model=state.model_reference(uri=model["uri"], version=model["version"], sha256=None),
    )


def live(
    *, stable: DeploymentState | None = None, canary: DeploymentState | None = None
) -> dict[Track, DeploymentState]:
    """The model Deployments that exist, by track."""
    found: dict[Track, DeploymentState] = {}
    if stable is not None:
        found["stable"] = stable
    if canary is not None:
        found["canary"] = canary
    return found


class Resource:
    """One ModelDeployment: the spec as applied from Git, and each reconcile the operator's
    handler does (main.reconcile_model_deployment without its I/O)."""

    def __init__(self, spec: Body) -> None:
        self.spec = copy.deepcopy(spec)
        self.generation = 1
        self.status: api.ModelDeploymentStatus | None = None
        self.now = T0

    def apply(self, spec: Body) -> Resource:
        self.spec = copy.deepcopy(spec)
        self.generation += 1
        return self

    def reconcile(
        self,
        tracks: Mapping[Track, DeploymentState],
        *,
        analysis: Mapping[str, float | Sample] | None = None,
        after: float = 10.0,
        commands: Mapping[rollout.Command, str] = rollout.NO_COMMANDS,
    ) -> Resource:
        self.now += timedelta(seconds=after)
        previous = self.status or api.ModelDeploymentStatus()
        invalid: str | None = None
        spec: api.ModelDeploymentSpec | None
        try:
            spec = api.parse_spec(self.spec)
        except ValueError as error:
            spec, invalid = None, str(error)
        current = previous
        if spec is not None:
            measured = None
            if analysis is not None:
                samples = {
                    name: value if isinstance(value, Sample) else Sample(value)
                    for name, value in analysis.items()
                }
                measured = Measurements(time=self.now, samples=samples)
            current = rollout.decide(
                spec=spec,
                status=previous,
                measurements=measured,
                now=self.now,
                tracks=tracks,
                commands=commands,
                generation=self.generation,
            ).status
        self.status = reconcile.build_status(
            spec=spec,
            invalid=invalid,
            previous=current,
            tracks=tracks,
            generation=self.generation,
            now=self.now,
        )
        return self

    def body(self) -> Body:
        body: Body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "breast-cancer", "namespace": "ml", "generation": self.generation},
            "spec": copy.deepcopy(self.spec),
        }
        if self.status is not None:
            body["status"] = reconcile.status_patch(self.status)
        return body


# --- the operator's statuses, one per situation ----------------------------------------------


def stable_serving() -> Resource:
    return Resource(BASE_SPEC).reconcile(live()).reconcile(live(stable=serving(STABLE)))


def canary_at_first_step() -> Resource:
    resource = stable_serving().apply(with_canary(CANARY, shadow=STABLE))
    resource.reconcile(live(stable=serving(STABLE), canary=serving(CANARY, ready=False)))
    return resource.reconcile(live(stable=serving(STABLE), canary=serving(CANARY)))


def promoting() -> Resource:
    resource = canary_at_first_step()
    tracks = live(stable=serving(STABLE), canary=serving(CANARY))
    resource.reconcile(tracks, analysis=GOOD, after=20)  # 20 % -> 50 %
    resource.reconcile(tracks, analysis=GOOD, after=20)  # the last step passed: promote
    assert resource.status is not None and resource.status.phase == "Promoted"
    return resource


def promoted() -> Resource:
    return promoting().reconcile(live(stable=serving(CANARY), canary=serving(CANARY)))


def bad_canary_at_first_step() -> Resource:
    resource = promoted().apply(with_canary(BAD, shadow=CANARY))
    return resource.reconcile(live(stable=serving(CANARY), canary=serving(BAD)))


def rolled_back() -> Resource:
    resource = bad_canary_at_first_step()
    tracks = live(stable=serving(CANARY), canary=serving(BAD))
    disagreeing = {**GOOD, m.SHADOW_AGREEMENT: 0.2}
    resource.reconcile(tracks, analysis=disagreeing)
    return resource.reconcile(tracks, analysis=disagreeing)


def held(drift: Sample, *, deadline: str | None = None) -> Callable[[], Resource]:
    """A canary whose analyses neither pass nor fail (drift has no data, or cannot be read)
    HELD_STREAK_LIMIT times in a row: Stalled=True only when the metrics cannot be read, or
    when they had no data for longer than progressDeadline (`deadline`, 10m by default: a
    warming drift window)."""

    def situation() -> Resource:
        resource = canary_at_first_step()
        if deadline is not None:
            spec = with_canary(CANARY, shadow=STABLE, progressDeadline=deadline)
            resource.apply(spec).reconcile(live(stable=serving(STABLE), canary=serving(CANARY)))
        tracks = live(stable=serving(STABLE), canary=serving(CANARY))
        for _ in range(rollout.HELD_STREAK_LIMIT):
            resource.reconcile(tracks, analysis={**GOOD, m.DRIFT: drift})
        return resource

    return situation


def scaled_to_zero() -> Resource:
    zero = replace(serving(STABLE), desired=0, available=0, updated=0)
    return (
        stable_serving()
        .apply({**BASE_SPEC, "serving": {"replicas": 0}})
        .reconcile(live(stable=zero))
    )


def canary_never_available() -> Resource:
    """The canary's pods never become ready: rolled back after progressDeadline (10m)."""
    resource = stable_serving().apply(with_canary(CANARY, shadow=STABLE))
    tracks = live(stable=serving(STABLE), canary=serving(CANARY, ready=False))
    resource.reconcile(tracks)
    return resource.reconcile(tracks, after=600)


def manually_rolled_back(*, rolled_out: bool) -> Resource:
    """The canary removed from the spec after its promotion, then `canaryml rollback`: the
    stable track goes back to 1.0.0 (RolledBack=True, reason ManualRollback)."""
    resource = promoted().apply(BASE_SPEC)
    resource.reconcile(live(stable=serving(CANARY)))
    # The stable Deployment just patched back to 1.0.0: its new pod is not up yet.
    rolling = DeploymentState(
        exists=True,
        desired=1,
        available=1,
        updated=0,
        current=True,
        version=STABLE["version"],
        model=state.model_reference(uri=STABLE["uri"], version="1.0.0", sha256=None),
    )
    resource.reconcile(live(stable=rolling), commands={"rollback": "1.1.0"})
    if rolled_out:
        resource.reconcile(live(stable=serving(STABLE)))
    return resource


def awaiting_approval(*, then: Mapping[str, float] | None = None) -> Resource:
    """spec.canary.approval.required: every step passed, and the promotion waits for
    `canaryml promote`; `then`, one more analysis during the wait."""
    spec = with_canary(CANARY, shadow=STABLE)
    spec["canary"]["approval"] = {"required": True}
    resource = stable_serving().apply(spec)
    tracks = live(stable=serving(STABLE), canary=serving(CANARY))
    resource.reconcile(tracks).reconcile(tracks)  # available: 20 %
    resource.reconcile(tracks, analysis=GOOD, after=20)  # 20 % -> 50 %
    resource.reconcile(tracks, analysis=GOOD, after=20)  # the last step passed: the gate
    if then is not None:
        resource.reconcile(tracks, analysis=then)
    return resource


def approved() -> Resource:
    tracks = live(stable=serving(STABLE), canary=serving(CANARY))
    return awaiting_approval().reconcile(tracks, commands={"promote": "1.1.0"})


def unobserved(resource: Resource) -> Resource:
    return resource.apply(with_canary(CANARY, shadow=STABLE))  # no reconcile yet


def without_status(resource: Resource) -> Resource:
    resource.status = None
    return resource


Situation = tuple[Callable[[], Resource], str, str]

SITUATIONS: dict[str, Situation] = {
    "just-created": (lambda: without_status(Resource(BASE_SPEC)), "Progressing", "generation 1"),
    "first-reconcile": (lambda: Resource(BASE_SPEC).reconcile(live()), "Progressing", "roll out"),
    "stable-starting": (
        lambda: Resource(BASE_SPEC).reconcile(live(stable=serving(STABLE, ready=False))),
        "Progressing",
        "roll out",
    ),
    "stable-serving": (stable_serving, "Healthy", "stable model 1.0.0: 1/1 replicas available"),
    "spec-not-yet-observed": (
        lambda: unobserved(stable_serving()),
        "Progressing",
        "waiting for the operator to observe generation 2",
    ),
    "invalid-spec": (
        lambda: (
            stable_serving()
            .apply({**BASE_SPEC, "model": {"uri": "ftp://x", "version": "1"}})
            .reconcile(live(stable=serving(STABLE)))
        ),
        "Degraded",
        "InvalidSpec: spec.model.uri: unsupported model URI 'ftp://x'",
    ),
    "waiting-for-the-canary": (
        lambda: (
            stable_serving()
            .apply(with_canary(CANARY, shadow=STABLE))
            .reconcile(live(stable=serving(STABLE), canary=serving(CANARY, ready=False)))
        ),
        "Progressing",
        "canary 1.1.0 at 0%: canary 1.1.0 rollout started",
    ),
    "canary-at-20": (
        canary_at_first_step,
        "Progressing",
        "canary 1.1.0 at 20%: canary 1.1.0 available: weight 0% -> 20% (step 1 of 2)",
    ),
    "drift-window-warming": (
        held(Sample(None)),
        "Progressing",
        "canary 1.1.0 at 20%: weight held at 20% (5 analyses in a row): drift: no data",
    ),
    "inconclusive-past-the-deadline": (
        held(Sample(None), deadline="50s"),
        "Degraded",
        "AnalysisInconclusive: weight held at 20% for 5 analyses in a row: drift: no data "
        "(longer than progressDeadline 50s)",
    ),
    "metrics-unavailable": (
        held(Sample.failed("prometheus unreachable")),
        "Degraded",
        "MetricsUnavailable: weight held at 20% for 5 analyses in a row",
    ),
    "paused": (
        lambda: (
            canary_at_first_step()
            .apply(with_canary(CANARY, shadow=STABLE, paused=True))
            .reconcile(live(stable=serving(STABLE), canary=serving(CANARY)))
        ),
        "Suspended",
        "rollout paused at step 1, weight 20%",
    ),
    "awaiting-approval": (
        awaiting_approval,
        "Suspended",
        "canary 1.1.0 passed every step and holds 50% until its promotion is approved: "
        '`canaryml promote NAME` (annotation canaryml.dev/promote: "1.1.0")',
    ),
    "awaiting-approval-analysis-held": (
        lambda: awaiting_approval(then={**GOOD, m.REQUESTS: 3.0}),
        "Suspended",
        "until its promotion is approved",
    ),
    "awaiting-approval-check-failed": (
        lambda: awaiting_approval(then={**GOOD, m.SHADOW_AGREEMENT: 0.2}),
        "Progressing",
        "canary 1.1.0 at 50%: canary 1.1.0 at 50% (step 2): an analysis failed; the step must "
        "pass for its interval again",
    ),
    "approved": (
        approved,
        "Progressing",
        'canary 1.1.0 promoted to stable: promoted by canaryml.dev/promote: "1.1.0"',
    ),
    "promoting": (promoting, "Progressing", "canary 1.1.0 promoted to stable: every step passed"),
    "promoted": (promoted, "Healthy", "stable model 1.1.0: 1/1 replicas available"),
    "rolled-back": (
        rolled_back,
        "Degraded",
        "canary 1.2.0 rolled back at 20%: shadowAgreement 20.0 % < min 90.0 % (2 failed analyses "
        "in a row, failureLimit 2)",
    ),
    "new-canary-after-a-rollback": (
        lambda: (
            rolled_back()
            .apply(with_canary({**BAD, "version": "1.2.1"}, shadow=CANARY))
            .reconcile(live(stable=serving(CANARY), canary=serving(BAD, ready=False)))
        ),
        "Progressing",
        "canary 1.2.1 at 0%",
    ),
    "scaled-to-zero": (
        scaled_to_zero,
        "Suspended",
        "serving.replicas is 0: stable model 1.0.0 has no pods to serve",
    ),
    "canary-never-available": (
        canary_never_available,
        "Degraded",
        "RolledBack: canary 1.1.0 rolled back: not available for progressDeadline 10m",
    ),
    "stable-pod-lost": (
        lambda: stable_serving().reconcile(live(stable=serving(STABLE, ready=False))),
        "Progressing",
        "stable model rolling out to 1.0.0: 0/1 replicas available",
    ),
    "manual-rollback-rolling": (
        lambda: manually_rolled_back(rolled_out=False),
        "Progressing",
        "stable model rolling out to 1.0.0",
    ),
    "manual-rollback-done": (
        lambda: manually_rolled_back(rolled_out=True),
        "Healthy",
        "stable model 1.0.0: 1/1 replicas available",
    ),
}


def test_the_situations_are_what_their_names_say() -> None:
    """The statuses the scenarios rely on, read directly (a change in the operator that moves
    them shows here first)."""

    def phase_and(resource: Resource, kind: str) -> tuple[str | None, str | None, str | None]:
        assert resource.status is not None
        condition = state.condition(resource.status, kind)
        return (
            resource.status.phase,
            condition.status if condition else None,
            condition.reason if condition else None,
        )

    assert phase_and(SITUATIONS["invalid-spec"][0](), "Stalled") == (
        "Failed",
        "True",
        "InvalidSpec",
    )
    assert phase_and(held(Sample(None))(), "Stalled") == ("Progressing", "False", "AsExpected")
    assert phase_and(held(Sample(None))(), "Progressing") == (
        "Progressing",
        "True",
        "AnalysisInconclusive",
    )
    assert phase_and(held(Sample(None), deadline="50s")(), "Stalled") == (
        "Progressing",
        "True",
        "AnalysisInconclusive",
    )
    assert phase_and(canary_never_available(), "RolledBack") == (
        "RolledBack",
        "True",
        "ProgressDeadlineExceeded",
    )
    assert phase_and(rolled_back(), "RolledBack") == ("RolledBack", "True", "AnalysisFailed")
    assert phase_and(promoting(), "Progressing") == ("Promoted", "True", "Promoting")
    assert phase_and(promoted(), "Progressing") == ("Promoted", "False", "Promoted")
    assert phase_and(manually_rolled_back(rolled_out=True), "RolledBack") == (
        "Stable",
        "True",
        "ManualRollback",
    )
    assert phase_and(SITUATIONS["paused"][0](), "Progressing") == ("Paused", "True", "Paused")
    assert phase_and(SITUATIONS["first-reconcile"][0](), "Reconciling") == (
        "Pending",
        "True",
        "RollingOut",
    )


# --- running the script as Argo CD does -------------------------------------------------------

RUNTIMES = ["lupa.lua51", "lupa"]  # Argo CD's gopher-lua is Lua 5.1; lupa's default is newer


def runtime_of(module_name: str) -> tuple[Any, Any]:
    module = pytest.importorskip(module_name)
    return module, module.LuaRuntime(unpack_returned_tuples=True)


def to_lua(lua: Any, value: Any) -> Any:
    """A JSON value as Argo CD hands it to Lua: objects and arrays as tables, null as nil (an
    absent key), every number a float."""
    if isinstance(value, Mapping):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, item) for item in value])
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def health(
    body: Mapping[str, Any], *, runtime: str = "lupa", lines: set[int] | None = None
) -> tuple[str, str]:
    module, lua = runtime_of(runtime)
    load = lua.eval("loadstring or load")
    chunk = load(SCRIPT, CHUNK)
    assert chunk is not None, "the script does not compile"
    if lines is not None:
        hook = lua.eval(
            f"""function(record)
                  debug.sethook(function(_, line)
                    if debug.getinfo(2, "S").source == "{CHUNK}" then record(line) end
                  end, "l")
                end"""
        )
        hook(lines.add)
    # Argo CD's sandbox: no files, processes or modules; standard base, string, math, table.
    lua.execute("os, io, require, package, dofile, loadfile, load, loadstring = nil")
    lua.globals().obj = to_lua(lua, body)
    result = chunk()
    assert module.lua_type(result) == "table", f"the script returned {result!r}"
    status, message = result["status"], result["message"]
    assert isinstance(status, str) and isinstance(message, str), (status, message)
    return status, message


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("situation", SITUATIONS.values(), ids=SITUATIONS.keys())
def test_each_situation_has_its_health(situation: Situation, runtime: str) -> None:
    make, expected_status, expected_message = situation
    status, message = health(make().body(), runtime=runtime)
    assert status == expected_status, message
    assert expected_message in message
    # The weight and the generation, floats in Lua, print as integers.
    assert not re.search(r"at \d+\.\d+%|generation \d+\.", message), message


def test_a_status_with_nothing_in_progress_and_not_ready_is_progressing() -> None:
    # Not a status this operator writes (Ready=False always comes with Reconciling=True): one
    # from an operator version without kstatus' Reconciling must not pass as Healthy.
    body = stable_serving().body()
    body["status"]["conditions"] = [
        {**c, "status": "False", "message": "stable model 1.0.0: 0/1 replicas available"}
        for c in body["status"]["conditions"]
        if c["type"] == "Ready"
    ]
    assert health(body) == ("Progressing", "stable model 1.0.0: 0/1 replicas available")


def test_every_outcome_of_the_script_is_reached() -> None:
    """Line coverage of the script over all situations: every `return hs` runs for one."""
    covered: set[int] = set()
    for make, _, _ in SITUATIONS.values():
        health(make().body(), lines=covered)
    fallback = stable_serving().body()
    fallback["status"]["conditions"] = []
    health(fallback, lines=covered)
    # A rollback as an operator before Stalled=RolledBack wrote it.
    older = rolled_back().body()
    older["status"]["conditions"] = [
        c for c in older["status"]["conditions"] if c["type"] != "Stalled"
    ]
    assert health(older, lines=covered)[0] == "Degraded"
    returns = {
        number
        for number, line in enumerate(SCRIPT.splitlines(), start=1)
        if line.strip() == "return hs"
    }
    assert len(returns) >= 8
    assert returns <= covered, f"lines never reached: {sorted(returns - covered)}"


def test_the_outcomes_are_argo_cds_own() -> None:
    statuses = {health(make().body())[0] for make, _, _ in SITUATIONS.values()}
    assert statuses == {"Healthy", "Progressing", "Degraded", "Suspended"}


# --- the documentation quotes the script as it is -----------------------------------------


def yaml_blocks() -> list[Any]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def test_the_argocd_cm_snippet_holds_the_script_verbatim() -> None:
    config_maps = [
        doc
        for doc in yaml_blocks()
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    ]
    assert len(config_maps) == 1
    data = config_maps[0]["data"]
    assert data["resource.customizations.health.canaryml.dev_ModelDeployment"] == SCRIPT


def test_the_gitops_manifests_name_the_chart_and_the_resource() -> None:
    docs = yaml_blocks()
    applications = [d for d in docs if d.get("kind") == "Application"]
    assert any(a["spec"]["source"].get("path") == "charts/canaryml" for a in applications)
    assert any(
        "ServerSideApply=true" in a["spec"].get("syncPolicy", {}).get("syncOptions", [])
        for a in applications
    )
    releases = [d for d in docs if d.get("kind") == "HelmRelease"]
    assert releases and all(r["apiVersion"] == "helm.toolkit.fluxcd.io/v2" for r in releases)
    kustomizations = [d for d in docs if d.get("kind") == "Kustomization"]
    checks = [c for k in kustomizations for c in k["spec"].get("healthChecks", [])]
    assert {"apiVersion": api.API_VERSION, "kind": api.KIND} in [
        {"apiVersion": c["apiVersion"], "kind": c["kind"]} for c in checks
    ]
