#!/usr/bin/env python3
"""How the operator copes with many ModelDeployments created at once.

    python benchmarks/operator_scale.py [--count 100] [--tracks 3]

Starts kmock's Kubernetes API emulator in this process (with the behaviours of
testing/canaryml_testing/kube_emulator.py), runs `canaryml operator --all-namespaces
--standalone` as a separate process against it, creates COUNT ModelDeployments at once
(stable, canary and shadow by default: eleven children each, the builtin router's four
included) and waits until every one has all its children and a status whose observedGeneration
is current. It reports:

- the wall time until then (dominated by the emulator, which looks objects up linearly);
- the operator process's peak memory (VmHWM) and its growth per resource;
- the operator process's own CPU seconds per reconciled resource, from /proc through psutil,
  excluding its start-up;
- the API calls the operator made per resource, by verb and kind, from the emulator's log.

Targets (issue 3): under 200 MB peak, under 20 ms of operator CPU per reconciled resource.
Linux only (VmHWM).
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
from canaryml_testing.cluster import Cluster, running_emulator  # noqa: E402
from canaryml_testing.kube_emulator import KubeEmulator  # noqa: E402

NS = "scale"
TARGET_PEAK_MB = 200.0
TARGET_CPU_MS = 20.0


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
    complete = sum(1 for n in children.values() if n == per_resource)
    return current == count and complete == count


def call_counts(emulator: KubeEmulator, since: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for request in list(emulator)[since:]:
        if (
            request.resource is None
            or request.params.get("watch") == "true"
            or request.headers.get("User-Agent", "").startswith("kmock/")  # this script's own
        ):
            continue
        sub = f"/{request.subresource}" if request.subresource else ""
        counts[f"{str(request.method).rsplit('.', 1)[-1]} {request.resource.plural}{sub}"] += 1
    return counts


async def wait_for_watch(emulator: KubeEmulator, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while not any(
        request.params.get("watch") == "true"
        and request.resource is not None
        and request.resource.plural == api.PLURAL
        for request in emulator
    ):
        if process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("the operator did not start watching ModelDeployments")
        await asyncio.sleep(0.1)


async def run(count: int, tracks: int, log: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_emulator(Path(tmp)) as (emulator, kubeconfig):
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT / part) for part in ("server", "operator", "cli")]
                ),
            }
            with log.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "canaryml_cli",
                    "operator",
                    "--all-namespaces",
                    "--standalone",
                    "--log-format",
                    "plain",
                    env=env,
                    stdout=sink,
                    stderr=sink,
                )
            try:
                await wait_for_watch(emulator, process)
                operator = psutil.Process(process.pid)
                await asyncio.sleep(1.0)  # let start-up work (discovery, first lists) finish
                idle_rss = operator.memory_info().rss / 2**20
                cpu_before = cpu_seconds(operator)
                emulator_before = cpu_seconds(psutil.Process())
                requests_before = len(list(emulator))

                cluster = Cluster(emulator)
                started = time.monotonic()
                await asyncio.gather(
                    *(cluster.apply(NS, f"model-{i:04d}", spec(i, tracks)) for i in range(count))
                )
                created = time.monotonic()
                while not settled(emulator, count, tracks):
                    if process.returncode is not None:
                        raise RuntimeError(f"the operator exited; see {log}")
                    if time.monotonic() - started > 1800:
                        raise RuntimeError("not settled within 30 minutes")
                    await asyncio.sleep(0.05)
                done = time.monotonic()
                cpu_done = cpu_seconds(operator)
                emulator_cpu = cpu_seconds(psutil.Process()) - emulator_before
                # Events are posted in the background: wait until the operator is quiet.
                quiet_cpu = cpu_done
                while True:
                    await asyncio.sleep(1.0)
                    now_cpu = cpu_seconds(operator)
                    if now_cpu - quiet_cpu < 0.02:
                        break
                    quiet_cpu = now_cpu
                return {
                    "count": count,
                    "children": count * children_per_resource(tracks),
                    "create_seconds": created - started,
                    "settle_seconds": done - started,
                    "cpu_settle": cpu_done - cpu_before,
                    "cpu_total": quiet_cpu - cpu_before,
                    "emulator_cpu": emulator_cpu,
                    "idle_rss_mb": idle_rss,
                    "peak_rss_mb": peak_rss_mb(process.pid),
                    "rss_mb": operator.memory_info().rss / 2**20,
                    "calls": call_counts(emulator, requests_before),
                }
            finally:
                if process.returncode is None:
                    process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), 10)
                    except TimeoutError:
                        process.kill()
                        await process.wait()


def report(result: dict[str, Any]) -> None:
    count = result["count"]
    cpu_ms = 1000 * result["cpu_total"] / count
    rows = [
        ("ModelDeployments created at once", f"{count}", ""),
        ("children created", f"{result['children']}", ""),
        ("time to create them (API calls)", f"{result['create_seconds']:.2f} s", ""),
        ("time until all reconciled", f"{result['settle_seconds']:.2f} s", ""),
        (
            "  emulator CPU in that time",
            f"{result['emulator_cpu']:.1f} s",
            "(kmock looks objects up linearly: it sets the pace)",
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
        (
            "operator peak memory (VmHWM)",
            f"{result['peak_rss_mb']:.1f} MB",
            f"< {TARGET_PEAK_MB:.0f} MB: {result['peak_rss_mb'] / TARGET_PEAK_MB:.2f}x of target",
        ),
        (
            "operator memory idle -> after",
            f"{result['idle_rss_mb']:.1f} -> {result['rss_mb']:.1f} MB",
            "",
        ),
        (
            "memory per resource",
            f"{1024 * (result['rss_mb'] - result['idle_rss_mb']) / count:.0f} KB",
            "",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{'measure':<{width}}  {'value':>16}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>16}  {target}")
    print(f"\nAPI calls by the operator per ModelDeployment ({count} resources):")
    calls: collections.Counter[str] = result["calls"]
    for call, n in sorted(calls.items(), key=lambda item: -item[1]):
        print(f"  {call:<40} {n / count:6.2f}")
    print(f"  {'total':<40} {sum(calls.values()) / count:6.2f}")


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
