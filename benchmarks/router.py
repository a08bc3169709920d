"""Router benchmark: the cost of `canaryml router` in front of the model servers.

    python benchmarks/router.py [--duration 5] [--repeats 3] [--connections 16] [--out r.json]

Trains and packages the example models in a temporary folder, starts one `canaryml serve`
worker per track (stable: the StandardScaler + LogisticRegression pipeline; shadow: the forest),
a minimal fast upstream (a raw uvloop + httptools server answering a fixed /predict body, so that
the router itself is the limit), and `canaryml router` workers in front of them; then drives
each with Debian's `wrk` and a one-row `POST /predict`, after a warm-up, runs interleaved round
after round, medians of the rounds. Prints every run (requests/s, latency, and the CPU time the
measured worker spent per request, which other load on the machine disturbs far less) and the
issue's three targets:

1. latency the router adds at 1 connection: p50 and p99 through the router minus direct to the
   model server (target: at most +0.5 ms at p50);
2. throughput at --connections: one router worker in front of the fast upstream against one
   model-server worker directly (target: at least 3x). With --pin (the default on machines with
   2 or more CPUs) each measured worker, model server or router, has CPU 0 to itself and wrk and
   the upstreams share CPU 1, so that both sides are one worker on one core. The router in
   front of the real model server is shown too: there the model server is the limit;
3. client-visible p99 with 100 % mirroring to the shadow against mirroring off (target: within
   10 %), at 1 connection and at --connections, in three set-ups: the stable and shadow model
   servers (on a small machine the shadow model then competes for the same CPUs as the stable
   one), the stable model server with the fast upstream as shadow, and the router alone (fast
   stable, fast shadow: the router's own cost of mirroring).

Every process it starts is stopped at the end, also on failure. Needs `wrk` (apt-get install
wrk). Other load on the machine shows in the figures: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from common import free_port, train_models, wrk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
READY_TIMEOUT_S = 120.0
DEPLOYMENT = "bench"
FIXED_ANSWER = (
    b'{"model":"breast-cancer","version":"1.0.0","track":"stable","predictions":[0],'
    b'"probabilities":[[0.9999981,0.000001937151]],"classes":[0,1]}'
)


@dataclass
class Process:
    label: str
    port: int
    command: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Run:
    """One measured configuration: which process wrk loads, how, and on which CPUs."""

    name: str
    target: Process
    connections: int
    pin: dict[str, int] = field(default_factory=dict)  # process label -> CPU


@dataclass
class Result:
    name: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU time of the measured worker per request
    non_2xx: int
    errors: int


# --- the minimal fast upstream ---------------------------------------------------------------


def serve_fixed(port: int) -> None:
    """Answer every request with FIXED_ANSWER: a stand-in model server that costs ~nothing."""
    import asyncio

    import httptools
    import uvloop

    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"x-canaryml-model-version: 1.0.0\r\n"
        b"content-length: %d\r\n\r\n" % len(FIXED_ANSWER)
    ) + FIXED_ANSWER

    class Fixed(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self) -> None:
            self.transport.write(response)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Fixed, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


# --- processes -------------------------------------------------------------------------------


def model_server(label: str, folder: Path, track: str) -> Process:
    port = free_port()
    command = [
        sys.executable, "-m", "canaryml_cli", "serve", str(folder), "--host", "127.0.0.1",
        "--port", str(port), "--track", track, "--model-deployment", DEPLOYMENT,
        "--sha256", hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest(),
    ]  # fmt: skip
    return Process(label, port, command, "/v2/health/ready", {"CANARYML_LOG_LEVEL": "warning"})


def router(label: str, upstreams: dict[str, Process], *args: str) -> Process:
    port = free_port()
    command = [
        sys.executable, "-m", "canaryml_cli", "router", "--host", "127.0.0.1",
        "--port", str(port), "--model-deployment", DEPLOYMENT, "--log-level", "warning",
        *(f"--upstream={track}={p.url}" for track, p in upstreams.items()), *args,
    ]  # fmt: skip
    return Process(label, port, command, "/router/readyz")


def fixed_upstream(label: str) -> Process:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--fixed-upstream", str(port)]
    return Process(label, port, command, "/")


@contextmanager
def running(process: Process, pids: dict[str, int]) -> Iterator[None]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    popen = subprocess.Popen(
        process.command,
        env={**os.environ, **process.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if popen.poll() is not None:
                log.seek(0)
                output = log.read().decode()[-3000:]
                raise RuntimeError(f"{process.label} exited with {popen.returncode}:\n{output}")
            try:
                if httpx.get(process.url + process.ready_path, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.label} not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        pids[process.label] = popen.pid
        yield
    finally:
        pids.pop(process.label, None)
        if popen.poll() is None:
            os.killpg(popen.pid, 15)
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, 9)
                popen.wait()
        log.close()


def set_cpus(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (onnxruntime and uvicorn start a few)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task.name), cpus)


# --- load ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system time of every thread of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(run: Run, body: str, pids: dict[str, int], *, seconds: int) -> dict[str, Any]:
    """One wrk run; with the measured worker's CPU time per request, a figure that other load
    on the machine disturbs far less than requests/s."""
    all_cpus = os.sched_getaffinity(0)
    for label, pid in pids.items():
        set_cpus(pid, {run.pin[label]} if label in run.pin else all_cpus)
    before = cpu_seconds(pids[run.target.label])
    result = wrk(
        run.target.url + "/predict", body, seconds=seconds, connections=run.connections,
        cpu=run.pin.get("wrk"),
    )  # fmt: skip
    spent = cpu_seconds(pids[run.target.label]) - before
    requests = result["rps"] * seconds
    result["cpu_us"] = spent / requests * 1e6 if requests else 0.0
    return result


# --- report ----------------------------------------------------------------------------------


def mirror_pairs(n: int) -> list[tuple[str, str, str]]:
    """(what, run without mirroring, run with 100 % mirroring) for the mirroring rows."""
    return [
        ("stable and shadow model servers, 1 conn", "router, 1 conn",
         "router mirroring 100%, 1 conn"),
        ("stable model server, fast shadow, 1 conn", "router, 1 conn",
         "router mirroring 100% to a fast shadow, 1 conn"),
        ("fast stable and fast shadow (the router alone), 1 conn",
         "router -> fast upstream, 1 conn", "router -> fast upstream mirroring 100%, 1 conn"),
        (f"stable and shadow model servers, {n} conns", f"router -> model server, {n} conns",
         f"router mirroring 100%, {n} conns"),
        (f"stable model server, fast shadow, {n} conns", f"router -> model server, {n} conns",
         f"router mirroring 100% to a fast shadow, {n} conns"),
        (f"the router alone, {n} conns (pinned; its CPU is the limit)",
         f"router -> fast upstream, {n} conns",
         f"router -> fast upstream mirroring 100%, {n} conns"),
    ]  # fmt: skip


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(
    results: dict[str, Result], mirrors: dict[str, dict[str, float]], args: argparse.Namespace
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    runs = Table(title=f"Runs (one worker each, 127.0.0.1, median of {args.repeats})")
    columns = ("run", "conns", "req/s", "p50 ms", "p99 ms", "CPU us/req", "non-2xx+errors")
    for column in columns:
        runs.add_column(column, justify="left" if column == "run" else "right")
    for r in results.values():
        runs.add_row(
            r.name, str(r.connections), f"{r.rps:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
            f"{r.cpu_us:.0f}", str(r.non_2xx + r.errors),
        )  # fmt: skip
    console.print(runs)

    direct, routed = results["direct, 1 conn"], results["router, 1 conn"]
    p50_added, p99_added = routed.p50_ms - direct.p50_ms, routed.p99_ms - direct.p99_ms
    server = results[f"direct, {args.connections} conns"]
    fast = results[f"router -> fast upstream, {args.connections} conns"]
    model = results[f"router -> model server, {args.connections} conns"]

    targets = Table(title="Targets")
    for column in ("what", "measured", "target", "verdict"):
        targets.add_column(column)
    targets.add_row(
        "latency added at 1 connection",
        f"p50 {p50_added * 1000:+.0f} us, p99 {p99_added * 1000:+.0f} us "
        f"({direct.p50_ms:.3f} -> {routed.p50_ms:.3f} ms p50)",
        "p50 <= +500 us",
        verdict(p50_added <= 0.5),
    )
    ratio = fast.rps / server.rps if server.rps else 0.0
    cpu_ratio = server.cpu_us / fast.cpu_us if fast.cpu_us else 0.0
    targets.add_row(
        f"router throughput, {args.connections} connections",
        f"{fast.rps:,.0f} req/s (fast upstream) vs {server.rps:,.0f} req/s (one model-server "
        f"worker): {ratio:.2f}x",
        ">= 3x",
        verdict(ratio >= 3),
    )
    targets.add_row(
        "  the same in CPU per request",
        f"router {fast.cpu_us:.0f} us, model server {server.cpu_us:.0f} us: one core carries "
        f"{cpu_ratio:.2f}x as many requests through the router",
        ">= 3x",
        verdict(cpu_ratio >= 3),
    )
    targets.add_row(
        "  in front of the model server",
        f"{model.rps:,.0f} req/s: {model.rps / server.rps:.2f}x of direct (the model server is "
        "the limit)"
        if server.rps
        else "-",
        "(information)",
        "-",
    )
    for what, off_name, on_name in mirror_pairs(args.connections):
        off, on = results[off_name], results[on_name]
        mirror_ratio = on.p99_ms / off.p99_ms if off.p99_ms else float("inf")
        targets.add_row(
            f"p99 with 100% mirroring: {what}",
            f"{off.p99_ms:.3f} -> {on.p99_ms:.3f} ms: {mirror_ratio:.2f}x (p50 {off.p50_ms:.3f} "
            f"-> {on.p50_ms:.3f}; req/s {off.rps:,.0f} -> {on.rps:,.0f})",
            "<= 1.10x",
            verdict(mirror_ratio <= 1.10),
        )
    console.print(targets)
    for label, counts in mirrors.items():
        console.print(
            f"Shadow comparisons counted by the router mirroring to the {label}: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in counts.items())
        )
    if args.pin:
        console.print(
            "Pinned runs (router -> fast upstream): the router on CPU 0; wrk and the upstreams "
            "on CPU 1; direct, N conns: the model server on CPU 0, wrk on CPU 1."
        )


def comparisons(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "canaryml_shadow_comparisons_total":
                result = sample.labels["result"]
                counts[result] = counts.get(result, 0.0) + sample.value
    return counts


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each measured run")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per configuration")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="give the measured worker of a throughput run a CPU of its own",
    )
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--fixed-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fixed_upstream:
        serve_fixed(args.fixed_upstream)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if args.pin and shutil.which("taskset") is None:
        sys.exit("--pin needs taskset (util-linux); or pass --no-pin")

    with tempfile.TemporaryDirectory(prefix="canaryml-router-bench-") as tmp:
        work = Path(tmp)
        folders = train_models(work / "models")
        row = pd.read_csv(work / "models" / "test.csv").drop(columns=["target"]).iloc[0]
        body = json.dumps(row.to_dict())

        stable = model_server("stable server", folders["stable"], "stable")
        shadow = model_server("shadow server", folders["canary"], "shadow")
        fast = fixed_upstream("fast upstream")
        fast_shadow = fixed_upstream("fast shadow")
        plain = router("router", {"stable": stable, "shadow": shadow})
        mirroring = router(
            "mirroring router", {"stable": stable, "shadow": shadow}, "--shadow-percent", "100"
        )
        to_fast_shadow = router(
            "router mirroring to a fast shadow",
            {"stable": stable, "shadow": fast_shadow},
            "--shadow-percent", "100",
        )  # fmt: skip
        in_front_of_fast = router("router (fast upstream)", {"stable": fast})
        fast_mirroring = router(
            "router (fast upstream) mirroring",
            {"stable": fast, "shadow": fast_shadow},
            "--shadow-percent", "100",
        )  # fmt: skip
        processes = [
            stable, shadow, fast, fast_shadow, plain, mirroring, to_fast_shadow,
            in_front_of_fast, fast_mirroring,
        ]  # fmt: skip

        n = args.connections
        pin_server = {"stable server": 0, "wrk": 1} if args.pin else {}
        upstreams_on_1 = {"fast upstream": 1, "fast shadow": 1, "wrk": 1}
        pin_router = {"router (fast upstream)": 0, **upstreams_on_1} if args.pin else {}
        pin_mirroring = {"router (fast upstream) mirroring": 0, **upstreams_on_1}
        runs = [
            Run("direct, 1 conn", stable, 1),
            Run("router, 1 conn", plain, 1),
            Run("router mirroring 100%, 1 conn", mirroring, 1),
            Run("router mirroring 100% to a fast shadow, 1 conn", to_fast_shadow, 1),
            Run("router -> fast upstream, 1 conn", in_front_of_fast, 1),
            Run("router -> fast upstream mirroring 100%, 1 conn", fast_mirroring, 1),
            Run(f"direct, {n} conns", stable, n, pin_server),
            Run(f"router -> fast upstream, {n} conns", in_front_of_fast, n, pin_router),
            Run(
                f"router -> fast upstream mirroring 100%, {n} conns",
                fast_mirroring,
                n,
                pin_mirroring if args.pin else {},
            ),
            Run(f"router -> model server, {n} conns", plain, n),
            Run(f"router mirroring 100%, {n} conns", mirroring, n),
            Run(f"router mirroring 100% to a fast shadow, {n} conns", to_fast_shadow, n),
        ]
        pids: dict[str, int] = {}
        measured: dict[str, list[dict[str, Any]]] = {run.name: [] for run in runs}
        with ExitStack() as stack:
            for process in processes:
                print(f"starting {process.label}...", file=sys.stderr)
                stack.enter_context(running(process, pids))
            for process in (stable, plain, in_front_of_fast):
                answer = httpx.post(
                    process.url + "/predict", content=body,
                    headers={"content-type": "application/json"}, timeout=30,
                )  # fmt: skip
                answer.raise_for_status()
            for run in runs:
                measure(run, body, pids, seconds=args.warmup)
            for round_ in range(args.repeats):
                for run in runs:
                    print(f"round {round_ + 1}/{args.repeats}: {run.name}", file=sys.stderr)
                    measured[run.name].append(measure(run, body, pids, seconds=args.duration))
            # Let the mirrors in flight land before counting them.
            time.sleep(1)
            mirrors = {
                "model shadow": comparisons(mirroring.url),
                "fast shadow": comparisons(to_fast_shadow.url),
                "fast shadow, fast stable": comparisons(fast_mirroring.url),
            }
        results = {
            run.name: Result(
                name=run.name,
                connections=run.connections,
                rps=statistics.median(m["rps"] for m in measured[run.name]),
                p50_ms=statistics.median(m["p50_ms"] for m in measured[run.name]),
                p99_ms=statistics.median(m["p99_ms"] for m in measured[run.name]),
                cpu_us=statistics.median(m["cpu_us"] for m in measured[run.name]),
                non_2xx=sum(m["non_2xx"] for m in measured[run.name]),
                errors=sum(m["errors"] for m in measured[run.name]),
            )
            for run in runs
        }
        report(results, mirrors, args)
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        "results": [asdict(r) for r in results.values()],
                        "mirrors": mirrors,
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
