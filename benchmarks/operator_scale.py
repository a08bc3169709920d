#!/usr/bin/env python3
"""How the operator copes with many ModelDeployments created at once.

    python benchmarks/operator_scale.py [--count 100] [--tracks 3]

Starts kmock's Kubernetes API emulator in this process (with the behaviours of
testing/canaryml_testing/kube_emulator.py), runs `canaryml operator --all-namespaces
--standalone` as a separate process against it, creates COUNT ModelDeployments at once
(stable, canary and shadow by default: eleven children each, the builtin router's four
included) and waits until every one has all its children and a status whose observedGeneration
is current. Then it changes an unrelated annotation of every ModelDeployment (a no-op
reconcile each: nothing to create, patch or write) and restarts the operator (a new process that
resumes every resource). It reports:

- the wall time until settled (dominated by the emulator, which lists by scanning every object);
- the operator process's peak memory (VmHWM) and its growth per resource, extrapolated to
  5,000 resources;
- the operator process's own CPU seconds per reconciled resource, from /proc through psutil,
  excluding its start-up;
- the API calls the operator made per resource, by verb and kind, from the emulator's log
  (the script's own calls left out), when creating, on a no-op reconcile and on a restart;
- the restart time: from starting the new process until every resource's resume handler has
  succeeded (counted in the operator's log).

Targets (issues 3 and 20): under 20 ms of operator CPU per reconciled resource; no LIST on a
no-op reconcile; under 300 MB at 5,000 resources; a restart that resumes 1,000 resources in
under 60 s. Linux only (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testing"))  # the test support it shares with tests/

from canaryml_api import resource as api  # noqa: E402
from canaryml_testing.cluster import TEST_USER_AGENT, Cluster, running_emulator  # noqa: E402
from canaryml_testing.kube_emulator import KubeEmulator  # noqa: E402

NS = "scale"
TARGET_MB_AT_5000 = 300.0
TARGET_CPU_MS = 20.0
TARGET_RESTART_SECONDS_AT_1000 = 60.0
RECONCILED = b"Handler 'model_deployment_changed' succeeded."
TOUCH_ANNOTATION = "benchmark.canaryml.dev/touched"


def spec(index: int, tracks: int) -> dict[str, Any]:
    # Pinned: the operator creates no track for a model without a digest.
    def model(version: str) -> dict[str, Any]:
        digest = hashlib.sha256(f"m{index}/{version}".encode()).hexdigest()
        return {"uri": f"s3://models/m{index}/{version}", "version": version, "sha256": digest}

    body: dict[str, Any] = {"model": model("1.0.0")}
    if tracks >= 2:
        body["canary"] = {"model": model("1.1.0")}
    if tracks >= 3:
        body["shadow"] = {"model": model("2.0.0")}
    return body


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc: Linux only")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# The builtin router's objects come with every resource: its Deployment, ServiceAccount, Role
# and RoleBinding.
CHILD_PLURALS = ("deployments", "services", "serviceaccounts", "roles", "rolebindings")


def children_per_resource(tracks: int) -> int:
    """A Deployment and a Service per track, the main Service, the router's four objects."""
    return 2 * tracks + 1 + 4


def settled(emulator: KubeEmulator, count: int, tracks: int) -> bool:
    """Every ModelDeployment has its children and a current observedGeneration (read from the
    emulator's memory, so that checking costs the emulator no requests)."""
    current, complete = progress(emulator, tracks)
    return current == count and complete == count


def progress(emulator: KubeEmulator, tracks: int) -> tuple[int, int]:
    """The ModelDeployments with a current observedGeneration, and those with all children."""
    children: collections.Counter[str] = collections.Counter()
    current = 0
    for (resource, _, _), obj in emulator.objects.items():
        if obj.deleted:
            continue
        raw = obj.raw
        if resource.plural == api.PLURAL:
            status = raw.get("status") or {}
            current += status.get("observedGeneration") == raw["metadata"].get("generation")
        elif resource.plural in CHILD_PLURALS:
            owner = (raw["metadata"].get("labels") or {}).get("canaryml.dev/model-deployment")
            if owner:
                children[owner] += 1
    per_resource = children_per_resource(tracks)
    return current, sum(1 for n in children.values() if n == per_resource)


def call_counts(emulator: KubeEmulator, since: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for request in list(emulator)[since:]:
        agent = request.headers.get("User-Agent", "")
        if (
            request.resource is None
            or request.params.get("watch") == "true"
            or agent.startswith("kmock/")  # this script's own
            or agent == TEST_USER_AGENT  # this script's own, through Cluster
        ):
            continue
        sub = f"/{request.subresource}" if request.subresource else ""
        verb = str(request.method).rsplit(".", 1)[-1]
        if verb == "GET" and request.name is None:
            verb = "LIST"
        counts[f"{verb} {request.resource.plural}{sub}"] += 1
    return counts


async def wait_for_watch(
    emulator: KubeEmulator, process: asyncio.subprocess.Process, since: int = 0
) -> None:
    deadline = time.monotonic() + 120
    while not any(
        request.params.get("watch") == "true"
        and request.resource is not None
        and request.resource.plural == api.PLURAL
        for request in list(emulator)[since:]
    ):
        if process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("the operator did not start watching ModelDeployments")
        await asyncio.sleep(0.1)


async def start_operator(kubeconfig: Path, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / part) for part in ("api", "server", "operator", "cli", "router")]
        ),
    }
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "canaryml_cli",
            "operator",
            "--all-namespaces",
            "--standalone",
            "--log-format",
            "json",
            env=env,
            stdout=sink,
            stderr=sink,
        )


async def stop_operator(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


def reconciled(log: Path) -> int:
    """Handler runs that succeeded (create, update, resume), from the operator's log."""
    return log.read_bytes().count(RECONCILED)


async def wait_reconciled(
    log: Path, process: asyncio.subprocess.Process, count: int, limit: float = 1800
) -> None:
    started = time.monotonic()
    while reconciled(log) < count:
        if process.returncode is not None:
            raise RuntimeError(f"the operator exited; see {log}")
        if time.monotonic() - started > limit:
            raise RuntimeError(f"not reconciled within {limit:.0f} s; see {log}")
        await asyncio.sleep(0.2)


async def wait_quiet(process: psutil.Process) -> float:
    """Wait until the operator uses (almost) no CPU for a second; its CPU seconds then."""
    quiet = cpu_seconds(process)
    while True:
        await asyncio.sleep(1.0)
        now = cpu_seconds(process)
        if now - quiet < 0.02:
            return now
        quiet = now


async def bounded(calls: list[Any], limit: int = 32) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Any) -> None:
        async with semaphore:
            await call

    await asyncio.gather(*(one(call) for call in calls))


async def run(count: int, tracks: int, log: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"count": count, "children": count * children_per_resource(tracks)}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_emulator(Path(tmp)) as (emulator, kubeconfig):
            cluster = Cluster(emulator)
            process = await start_operator(kubeconfig, log)
            try:
                await wait_for_watch(emulator, process)
                operator = psutil.Process(process.pid)
                await asyncio.sleep(1.0)  # let start-up work (discovery, first lists) finish
                idle_rss = operator.memory_info().rss / 2**20
                cpu_before = cpu_seconds(operator)
                emulator_before = cpu_seconds(psutil.Process())
                requests_before = len(list(emulator))

                # 1. COUNT ModelDeployments at once, until all are reconciled.
                started = time.monotonic()
                await bounded(
                    [cluster.apply(NS, f"model-{i:04d}", spec(i, tracks)) for i in range(count)],
                    limit=64,
                )
                created = time.monotonic()
                pause = 0.05 if count <= 200 else 0.5  # each look scans the emulator's objects
                shown = time.monotonic()
                while not settled(emulator, count, tracks):
                    if time.monotonic() - shown > 30:
                        current, complete = progress(emulator, tracks)
                        print(f"  settling: {current} current, {complete} complete", flush=True)
                        shown = time.monotonic()
                    if process.returncode is not None:
                        raise RuntimeError(f"the operator exited; see {log}")
                    if time.monotonic() - started > 3600:
                        raise RuntimeError("not settled within an hour")
                    await asyncio.sleep(pause)
                done = time.monotonic()
                cpu_done = cpu_seconds(operator)
                emulator_cpu = cpu_seconds(psutil.Process()) - emulator_before
                # Events are posted in the background: wait until the operator is quiet.
                quiet_cpu = await wait_quiet(operator)
                result.update(
                    create_seconds=created - started,
                    settle_seconds=done - started,
                    cpu_settle=cpu_done - cpu_before,
                    cpu_total=quiet_cpu - cpu_before,
                    emulator_cpu=emulator_cpu,
                    idle_rss_mb=idle_rss,
                    peak_rss_mb=peak_rss_mb(process.pid),
                    rss_mb=operator.memory_info().rss / 2**20,
                    calls=call_counts(emulator, requests_before),
                )

                print(f"  settled in {done - started:.1f} s; no-op reconciles next", flush=True)
                # 2. A no-op reconcile of each: an annotation of nobody's changes (kopf's update
                # handler runs; nothing is created, patched or written).
                before_noop = reconciled(log)
                requests_before = len(list(emulator))
                cpu_before = cpu_seconds(operator)
                touch = {"metadata": {"annotations": {TOUCH_ANNOTATION: "1"}}}
                await bounded(
                    [
                        cluster.patch("ModelDeployment", NS, f"model-{i:04d}", touch)
                        for i in range(count)
                    ]
                )
                await wait_reconciled(log, process, before_noop + count)
                result.update(
                    noop_cpu=await wait_quiet(operator) - cpu_before,
                    noop_calls=call_counts(emulator, requests_before),
                    rss_after_noop_mb=operator.memory_info().rss / 2**20,
                )
            finally:
                await stop_operator(process)

            # 3. A restart: a new process resumes every resource.
            print("  restarting the operator", flush=True)
            restart_log = log.with_suffix(".restart.log")
            requests_before = len(list(emulator))
            started = time.monotonic()
            process = await start_operator(kubeconfig, restart_log)
            try:
                operator = psutil.Process(process.pid)
                await wait_reconciled(restart_log, process, count)
                result["restart_seconds"] = time.monotonic() - started
                result["restart_cpu"] = await wait_quiet(operator)  # start-up included
                result["restart_peak_rss_mb"] = peak_rss_mb(process.pid)
                result["restart_calls"] = call_counts(emulator, requests_before)
            finally:
                await stop_operator(process)
    return result


def report(result: dict[str, Any]) -> None:
    count = result["count"]
    cpu_ms = 1000 * result["cpu_total"] / count
    per_kb = 1024 * (result["rss_mb"] - result["idle_rss_mb"]) / count
    at_5000 = result["idle_rss_mb"] + per_kb * 5000 / 1024
    restart_target = TARGET_RESTART_SECONDS_AT_1000 * count / 1000

    def calls_text(calls: collections.Counter[str]) -> str:
        lists = sum(n for call, n in calls.items() if call.startswith("LIST "))
        return f"{sum(calls.values()) / count:.2f} ({lists / count:.2f} LIST)"

    rows = [
        ("ModelDeployments created at once", f"{count}", ""),
        ("children created", f"{result['children']}", ""),
        ("time to create them (API calls)", f"{result['create_seconds']:.2f} s", ""),
        ("time until all reconciled", f"{result['settle_seconds']:.2f} s", ""),
        (
            "  emulator CPU in that time",
            f"{result['emulator_cpu']:.1f} s",
            "(the emulator sets the pace)",
        ),
        (
            "operator CPU per resource",
            f"{cpu_ms:.1f} ms",
            f"< {TARGET_CPU_MS:.0f} ms: {cpu_ms / TARGET_CPU_MS:.2f}x of target",
        ),
        (
            "  of which until reconciled",
            f"{1000 * result['cpu_settle'] / count:.1f} ms",
            "(the rest: Events posted)",
        ),
        ("API calls per resource, creating", calls_text(result["calls"]), ""),
        (
            "no-op reconcile: CPU per resource",
            f"{1000 * result['noop_cpu'] / count:.1f} ms",
            "",
        ),
        ("no-op reconcile: API calls each", calls_text(result["noop_calls"]), "no LIST"),
        ("operator peak memory (VmHWM)", f"{result['peak_rss_mb']:.1f} MB", ""),
        (
            "operator memory idle -> after",
            f"{result['idle_rss_mb']:.1f} -> {result['rss_mb']:.1f} MB",
            "",
        ),
        ("memory per resource", f"{per_kb:.0f} KB", ""),
        (
            "  extrapolated to 5,000 resources",
            f"{at_5000:.0f} MB",
            f"< {TARGET_MB_AT_5000:.0f} MB: {at_5000 / TARGET_MB_AT_5000:.2f}x of target",
        ),
        (
            "restart: until every resource resumed",
            f"{result['restart_seconds']:.1f} s",
            f"< {restart_target:.1f} s (60 s per 1,000): "
            f"{result['restart_seconds'] / restart_target:.2f}x",
        ),
        (
            "restart: operator CPU (start-up included)",
            f"{result['restart_cpu']:.1f} s",
            f"{1000 * result['restart_cpu'] / count:.1f} ms per resource",
        ),
        ("restart: API calls per resource", calls_text(result["restart_calls"]), ""),
        ("restart: peak memory", f"{result['restart_peak_rss_mb']:.1f} MB", ""),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{'measure':<{width}}  {'value':>20}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>20}  {target}")
    for title, key in (
        ("creating", "calls"),
        ("a no-op reconcile", "noop_calls"),
        ("a restart", "restart_calls"),
    ):
        calls: collections.Counter[str] = result[key]
        print(f"\nAPI calls by the operator per ModelDeployment, {title} ({count} resources):")
        for call, n in sorted(calls.items(), key=lambda item: -item[1]):
            print(f"  {call:<40} {n / count:8.3f}")
        print(f"  {'total':<40} {sum(calls.values()) / count:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="ModelDeployments to create")
    parser.add_argument(
        "--tracks", type=int, choices=(1, 2, 3), default=3, help="1 stable, 2 +canary, 3 +shadow"
    )
    parser.add_argument("--log", type=Path, default=Path("operator_scale.log"))
    args = parser.parse_args()
    result = asyncio.run(run(args.count, args.tracks, args.log))
    report(result)


if __name__ == "__main__":
    main()
