"""The kind walk-through end to end: a good canary is promoted after approval, a bad one is
rolled back, and the stable track autoscales.

One flow in order (pytest runs a module's tests top to bottom): the second rollout starts from
the stable model the first one promoted, and the last test judges the traffic of both. Each
step prints the command it runs; a wait that times out fails with the resource's status, its
objects and its latest Events.
"""

from __future__ import annotations

import pytest

from tests.e2e import steps
from tests.e2e.conftest import Walkthrough

pytestmark = pytest.mark.e2e

PROMOTION_TIMEOUT_S = 360.0
ROLLBACK_TIMEOUT_S = 300.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def test_a_good_canary_is_promoted(walkthrough: Walkthrough) -> None:
    ns = walkthrough.namespace
    assert walkthrough.traffic.running, walkthrough.traffic.output()

    say("start a good canary: 1.1.0 at 20 %, then 50 %, its answers compared with 1.0.0's")
    steps.patch_model_deployment(steps.GOOD_CANARY_PATCH, namespace=ns)
    budget = steps.Deadline(PROMOTION_TIMEOUT_S)
    say("every step passed: the promotion waits for approval (canary.approval.required)")
    steps.wait_for(namespace=ns, condition="Approved=False", timeout=budget.left())
    waiting = steps.get_status(ns)
    assert (waiting["phase"], waiting["canaryWeight"]) == ("Progressing", 50), waiting
    assert waiting["stableModel"]["version"] == "1.0.0", waiting  # not promoted yet
    approved = steps.condition(waiting, "Approved")
    assert approved is not None and approved["reason"] == "AwaitingApproval", approved
    reconciling = steps.condition(waiting, "Reconciling")
    assert reconciling is not None and reconciling["status"] == "False", reconciling
    assert "AWAITED since" in steps.canaryml("status", steps.NAME, "-n", ns)
    say("approve it")
    assert 'canaryml.dev/promote: "1.1.0"' in steps.canaryml("promote", steps.NAME, "-n", ns)
    steps.wait_for(namespace=ns, jsonpath=".status.phase", equals="Promoted", timeout=budget.left())
    say("promoted: wait for the stable track to serve 1.1.0 and the canary's weight to go")
    steps.wait_for(
        namespace=ns, jsonpath=".status.stableVersion", equals="1.1.0", timeout=budget.left()
    )
    steps.wait_for(namespace=ns, jsonpath=".status.canaryWeight", equals="0", timeout=60)

    status = steps.get_status(ns)
    last = status["history"][-1]
    assert (last["event"], last["version"]) == ("promoted", "1.1.0"), last
    assert last["replaced"]["version"] == "1.0.0", last
    assert last["reason"] == 'promoted by canaryml.dev/promote: "1.1.0"', last
    progressing = steps.condition(status, "Progressing")
    assert progressing is not None and progressing["reason"] == "Promoted", progressing
    rolled_back = steps.condition(status, "RolledBack")
    assert rolled_back is None or rolled_back["status"] == "False", rolled_back
    # Through the router, as a client sees it.
    steps.wait_until_served_by(walkthrough.url, walkthrough.row, version="1.1.0", timeout=60)
    walkthrough.promoted = True


def test_a_bad_canary_is_rolled_back(walkthrough: Walkthrough) -> None:
    if not walkthrough.promoted:
        pytest.skip("needs the stable 1.1.0 that test_a_good_canary_is_promoted promotes")
    ns = walkthrough.namespace
    assert walkthrough.traffic.running, walkthrough.traffic.output()

    say("start a bad canary: 1.2.0, its answers compared with the stable 1.1.0's")
    steps.patch_model_deployment(steps.BAD_CANARY_PATCH, namespace=ns)
    steps.wait_for(namespace=ns, condition="RolledBack", timeout=ROLLBACK_TIMEOUT_S)

    status = steps.get_status(ns)
    assert status["phase"] == "RolledBack"
    assert status["stableVersion"] == "1.1.0"
    assert status["canaryWeight"] == 0
    last = status["history"][-1]
    assert (last["event"], last["version"]) == ("rolledBack", "1.2.0"), last
    # rollout.py: "canary 1.2.0 rolled back at 20%: shadowAgreement 20.0 % < min 85.0 % (2
    # failed analyses in a row, failureLimit 2)"
    assert "shadowAgreement" in last["reason"] and "< min 85.0 %" in last["reason"], last
    rolled_back = steps.condition(status, "RolledBack")
    assert rolled_back is not None and rolled_back["reason"] == "AnalysisFailed", rolled_back
    assert rolled_back["message"] == last["reason"]
    steps.wait_until_served_by(walkthrough.url, walkthrough.row, version="1.1.0", timeout=60)


def test_the_spec_can_name_the_promoted_model_and_nothing_moves(walkthrough: Walkthrough) -> None:
    if not walkthrough.promoted:
        pytest.skip("needs the stable 1.1.0 that test_a_good_canary_is_promoted promotes")
    ns = walkthrough.namespace
    stable = steps.get_object(ns, f"deployment/{steps.NAME}-stable")

    say("name the promoted model in the spec and remove the canary and the shadow")
    steps.patch_model_deployment(steps.SETTLE_PATCH, namespace=ns)
    steps.wait_for(namespace=ns, jsonpath=".status.phase", equals="Stable", timeout=120)
    steps.wait_for(namespace=ns, condition="Ready", timeout=60)

    status = steps.get_status(ns)
    assert (status["stableVersion"], status["canaryWeight"]) == ("1.1.0", 0)
    # The stable Deployment already served that model: it was not rolled again.
    after = steps.get_object(ns, f"deployment/{steps.NAME}-stable")
    assert after["metadata"]["generation"] == stable["metadata"]["generation"]
    steps.wait_until_served_by(walkthrough.url, walkthrough.row, version="1.1.0", timeout=30)


def test_the_stable_track_autoscales_and_the_operator_leaves_replicas_to_the_hpa(
    walkthrough: Walkthrough,
) -> None:
    if not walkthrough.promoted:
        pytest.skip("needs the settled stable 1.1.0 of the tests above")
    ns = walkthrough.namespace
    deployment = f"deployment/{steps.NAME}-stable"

    say("autoscale the stable track: an HPA with minReplicas 2 raises the Deployment to 2")
    autoscaling = {"minReplicas": 2, "maxReplicas": 3, "targetCpuUtilization": 80}
    steps.patch_model_deployment({"spec": {"serving": {"autoscaling": autoscaling}}}, namespace=ns)
    hpa = steps.wait_until_exists(ns, f"hpa/{steps.NAME}-stable", timeout=120)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 3), hpa["spec"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{steps.NAME}-stable", hpa["spec"]
    # The HPA controller raises replicas below minReplicas even without a metrics server.
    steps.wait_for(
        namespace=ns, resource=deployment, jsonpath=".spec.replicas", equals="2", timeout=180
    )

    say("a spec change the operator reconciles leaves the HPA's replicas alone")
    steps.patch_model_deployment({"spec": {"serving": {"replicas": 1}}}, namespace=ns)
    generation = str(steps.get_object(ns)["metadata"]["generation"])
    steps.wait_for(
        namespace=ns, jsonpath=".status.observedGeneration", equals=generation, timeout=60
    )
    steps.wait_for(namespace=ns, condition="Ready", timeout=120)
    assert steps.get_object(ns, deployment)["spec"]["replicas"] == 2

    say("stop autoscaling: the HPA goes, the operator writes replicas again")
    steps.patch_model_deployment({"spec": {"serving": {"autoscaling": None}}}, namespace=ns)
    steps.wait_for(
        namespace=ns, resource=deployment, jsonpath=".spec.replicas", equals="1", timeout=120
    )
    gone = steps.kubectl("get", f"hpa/{steps.NAME}-stable", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout


def test_the_clients_saw_no_server_errors(walkthrough: Walkthrough) -> None:
    # Both rollouts moved traffic between tracks and replaced the stable pods; the design
    # promises that no request is dropped on the way.
    totals = walkthrough.traffic.stop()
    print(f"traffic totals: {totals}\n{walkthrough.traffic.output()}", flush=True)
    codes: dict[str, int] = totals["codes"]
    total = totals["total"]
    server_errors = sum(n for code, n in codes.items() if code.startswith("5"))
    assert total > 0, "no request was answered"
    assert codes.get("200", 0) >= 0.9 * total, codes
    assert server_errors <= 0.01 * total, codes
