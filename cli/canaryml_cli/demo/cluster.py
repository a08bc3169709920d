"""The local cluster of `canaryml demo`: processes standing in for a ModelDeployment's track
Deployments and its router.

`LocalCluster` is the demo's `loop.Tracks`: it says what each local server serves, as the live
Deployments do for the operator, takes the plan of each turn of the loop, and `converge`s to
it: the router gets the routing plan's canary weight (its admin endpoint), a promotion starts a
new stable server with the canary's model and switches the router's stable upstream to it once
it is ready (a rolling update, in one step), and a drained canary is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from canaryml_api import resource as api
from canaryml_api.routing import RoutingPlan, plan_routing
from canaryml_api.tracks import Track
from canaryml_operator import rollout
from canaryml_operator.children import routing_of
from canaryml_operator.state import DeploymentState, TrackPlan, model_reference

from canaryml_cli.demo import scenarios
from canaryml_cli.demo.processes import DemoError, LocalProcess, ProcessGroup
from canaryml_cli.demo.prometheus import free_port
from canaryml_cli.demo.record import DemoRecord, WeightChange

SERVER_READY = "/v2/health/ready"
ROUTER_READY = "/router/readyz"


@dataclass
class LocalTrack:
    process: LocalProcess
    model: api.ModelRef


@dataclass
class LocalCluster:
    """The processes standing in for the ModelDeployment's Deployments and its router."""

    name: str  # the ModelDeployment's
    spec: api.ModelDeploymentSpec
    canary_env: Mapping[str, str]  # the scenario's faults, for the canary's server
    group: ProcessGroup
    record: DemoRecord
    tracks: dict[Track, LocalTrack] = field(default_factory=dict)
    router: LocalProcess | None = None
    router_admin: str = ""  # the router's admin listener (PUT /router/weights), a base URL
    weight: int = 0  # what the router was given
    wanted: tuple[TrackPlan, RoutingPlan] | None = None  # the last plan applied, to converge to
    # One key for every server of the run (as the operator passes the Secret's to every
    # track): any server verifies any track's prediction ids, a promoted stable's too.
    feedback_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=10.0))
    _promotion: asyncio.Task[None] | None = None
    _retired: list[asyncio.Task[None]] = field(default_factory=list)

    def _serve(self, track: Track, model: api.ModelRef) -> LocalProcess:
        args = ["serve", model.uri, "--track", track, "--model-deployment", self.name]
        if model.sha256:
            args += ["--sha256", model.sha256]
        env = {"CANARYML_LOG_LEVEL": "warning", **scenarios.SERVER_ENV}
        env["CANARYML_FEEDBACK_KEY"] = self.feedback_key
        # As the operator sets it: an unpinned model loads only where the spec allows it.
        env["CANARYML_REQUIRE_SHA256"] = "false" if self.spec.allow_unpinned_models else "true"
        if track == "canary":
            env.update(self.canary_env)
        suffix = "" if track not in self.tracks else f"-{len(self.group.processes)}"
        return self.group.start(name=f"{track}-server{suffix}", args=args, env=env)

    async def start(self) -> None:
        """Every server at once, then the router in front of them (weight 0)."""
        spec = self.spec
        assert spec.canary is not None
        wanted: dict[Track, api.ModelRef] = {
            "stable": spec.model,
            "canary": spec.canary.model,
        }
        if spec.shadow is not None and spec.shadow.percent > 0:
            wanted["shadow"] = spec.shadow.model
        started = {track: LocalTrack(self._serve(track, m), m) for track, m in wanted.items()}
        self.tracks.update(started)
        await asyncio.gather(*(t.process.wait_ready(path=SERVER_READY) for t in started.values()))
        # The routing plan before any rollout: the canary gets nothing yet.
        routing = plan_routing(spec, api.ModelDeploymentStatus())
        # The admin listener takes the weights; --admin-upstreams lets a promotion repoint stable.
        admin_port = free_port()
        self.router_admin = f"http://127.0.0.1:{admin_port}"
        args = ["router", "--model-deployment", self.name, "--admin", "--admin-upstreams"]
        args += ["--admin-port", str(admin_port), "--log-level"]
        args += ["warning", "--canary-weight", str(routing.canary_weight)]
        args += ["--sticky-header", routing.sticky_header or scenarios.STICKY_HEADER]
        for track, local in started.items():
            args += ["--upstream", f"{track}={local.process.url}"]
            args += ["--version", f"{track}={local.model.version}"]
        if spec.shadow is not None:
            args += ["--shadow-percent", str(routing.shadow_percent)]
            args += ["--probability-tolerance", str(routing.probability_tolerance)]
        self.router = self.group.start(name="router", args=args)
        await self.router.wait_ready(path=ROUTER_READY)

    def states(self) -> dict[Track, DeploymentState]:
        """What each track's "Deployment" says: rolled out with its model while it runs."""
        states: dict[Track, DeploymentState] = {}
        for track, local in self.tracks.items():
            running = local.process.alive
            model = local.model
            states[track] = DeploymentState(
                exists=True,
                desired=1,
                available=1 if running else 0,
                updated=1,
                current=True,
                version=model.version,
                model=model_reference(uri=model.uri, version=model.version, sha256=model.sha256),
            )
        return states

    def live(self) -> dict[Track, DeploymentState]:
        """`loop.Tracks`: what the servers say now."""
        return self.states()

    def apply(
        self, *, spec: api.ModelDeploymentSpec, plan: TrackPlan
    ) -> dict[Track, DeploymentState]:
        """`loop.Tracks`: take the plan and its traffic, as the operator's HTTPRoute does
        (`converge` acts on them, as a Deployment rolls out after its update); what the servers
        say until then."""
        self.wanted = (plan, routing_of(spec, plan))
        return self.states()

    async def converge(self, *, now: datetime) -> None:
        """Make the processes match the plan last applied: the routing plan's weight first, so
        that no request goes to a server about to stop."""
        if self.wanted is None:
            return
        plan, routing = self.wanted
        if routing.canary_weight != self.weight:
            await self._put({"canaryWeight": routing.canary_weight})
            self.weight = routing.canary_weight
            self.record.weights.append(WeightChange(now, routing.canary_weight))
        stable = self.tracks["stable"]
        if _identity(plan.stable_model) != _identity(stable.model) and self._promotion is None:
            self._promotion = asyncio.get_running_loop().create_task(
                self._roll_stable(plan.stable_model)
            )
        canary = self.tracks.get("canary")
        if canary is not None and not plan.canary_replicas and self.weight == 0:
            del self.tracks["canary"]
            await asyncio.to_thread(canary.process.stop)

    async def _roll_stable(self, model: api.ModelRef) -> None:
        """The stable Deployment's rolling update: the new server first, then the switch."""
        old = self.tracks["stable"]
        new = self._serve("stable", model)
        await new.wait_ready(path=SERVER_READY)
        await self._put({"upstreams": {"stable": new.url}, "versions": {"stable": model.version}})
        self.tracks["stable"] = LocalTrack(new, model)
        self._retired.append(asyncio.get_running_loop().create_task(self._retire(old.process)))

    async def _retire(self, process: LocalProcess) -> None:
        # Requests already sent to it finish first (the operator's drain time, as for pods).
        await asyncio.sleep(rollout.DRAIN_SECONDS)
        await asyncio.to_thread(process.stop)

    async def _put(self, body: Mapping[str, Any]) -> None:
        assert self.router is not None
        response = await self._client.put(f"{self.router_admin}/router/weights", json=dict(body))
        if response.status_code != 200:
            raise DemoError(
                f"the router refused {body}: HTTP {response.status_code} {response.text}"
            )

    def check_alive(self) -> None:
        """A process that died on its own is the demo failing, not the rollout."""
        for local in self.tracks.values():
            if not local.process.alive:
                raise DemoError(
                    f"{local.process.name} exited with code {local.process.popen.returncode}:\n"
                    + local.process.log_tail()
                )
        if self.router is not None and not self.router.alive:
            raise DemoError(f"the router exited:\n{self.router.log_tail()}")

    async def close(self) -> None:
        for task in [self._promotion, *self._retired]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, DemoError):
                    await task
        await self._client.aclose()


def _identity(model: api.ModelRef) -> tuple[str, str, str | None]:
    return (model.uri, model.version, model.sha256)
