"""Serving benchmark: canaryml against MLServer, KServe and a bare FastAPI handler.

    python benchmarks/serve.py [--duration 5] [--repeats 3] [--connections 16] [--out r.json]

Trains and packages the example models (a 100-tree RandomForest and a StandardScaler +
LogisticRegression pipeline on scikit-learn's bundled breast-cancer data), starts each server
with one worker on 127.0.0.1, checks every server answers with the same labels as in-process
scikit-learn, then drives each with Debian's `wrk` (same request, same settings, after a warm-up)
with 1-row and 64-row Open Inference Protocol v2 requests. All servers of a model run at once
and are loaded in turn, round after round; each figure is the median of the rounds. Prints
requests/s, p50 and p99 latency, canaryml's ratio to each peer, the in-process floor
(scikit-learn and onnxruntime per call), the cost of canaryml's drift monitor and metrics
(on against off), the cost of prediction ids (`canaryml-ids`, a server with a feedback key,
against `canaryml`, one without), and the feedback endpoint's throughput (one id, and 64 ids
per request, on the `canaryml-ids` server).

    python benchmarks/serve.py --servers canaryml,canaryml-ids   # the prediction ids' cost only
    python benchmarks/serve.py --servers canaryml,canaryml-allrows,canaryml-nodrift,canaryml-bare
        # the drift monitor's cost: sampled (the default), binning every row, and off

Peers run in their own virtual environments (MLServer pins an older FastAPI), created once
under ~/.cache/canaryml-bench/venvs (--venv-dir) with the same scikit-learn version as here.
Every process it starts is stopped at the end, also on failure. Needs `wrk` (apt-get install
wrk) and network access to PyPI the first time, for the peers' environments.
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
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
from common import free_port, train_models, wrk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_NAME = "breast-cancer"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
FEEDBACK_PATH = f"/v2/models/{MODEL_NAME}/feedback"
FEEDBACK_KEY = "benchmark-feedback-key-0123456789abcdef"
MODELS = {"forest": "canary", "pipeline": "stable"}  # benchmark name -> example role
PEER_PACKAGES = {
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"],
    "kserve": ["kserve==0.21.0"],
}
READY_TIMEOUT_S = 120.0


@dataclass
class Result:
    model: str
    rows: int
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    predictions_match: bool | None = None
    cpu_us: float | None = None  # the server's CPU (its process group) per request


@dataclass
class Server:
    label: str
    port: int
    command: list[str]
    path: str = INFER_PATH
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    pid: int | None = None  # once running: its process group's id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return self.url + self.path


# --- models -----------------------------------------------------------------------------------


def v2_body(rows: np.ndarray) -> str:
    return json.dumps(
        {
            "inputs": [
                {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                 "data": rows.ravel().tolist()}
            ]
        }
    )  # fmt: skip


# --- peers ------------------------------------------------------------------------------------


def peer_python(venv_dir: Path, name: str) -> Path:
    """The interpreter of a peer's environment, created (once) with pip from PyPI."""
    venv = venv_dir / name
    python = venv / "bin" / "python"
    import sklearn

    wanted = [*PEER_PACKAGES[name], f"scikit-learn=={sklearn.__version__}"]
    stamp = venv / "canaryml-bench.json"
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    print(f"creating the {name} environment in {venv} (once)...", file=sys.stderr)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted],
        check=True,
    )
    stamp.write_text(json.dumps(wanted))
    print(f"  {name} environment ready in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return python


def mlserver(python: Path, joblib_path: Path, work: Path, port: int) -> Server:
    folder = work / "mlserver"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(joblib_path, folder / "model.joblib")
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 1,  # its default: one inference worker process
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    mlserver_bin = python.parent / "mlserver"
    return Server("mlserver", port, [str(mlserver_bin), "start", str(folder)], cwd=folder)


def kserve(python: Path, joblib_path: Path, port: int) -> Server:
    script = HERE / "peers" / "kserve_server.py"
    return Server("kserve", port, [str(python), str(script), str(joblib_path), str(port)])


def bare_fastapi(joblib_path: Path, port: int) -> Server:
    script = HERE / "peers" / "fastapi_server.py"
    return Server("fastapi", port, [sys.executable, str(script), str(joblib_path), str(port)])


def canaryml(folder: Path, port: int, label: str, env: dict[str, str]) -> Server:
    command = [
        sys.executable, "-m", "canaryml_cli", "serve", str(folder),
        "--host", "127.0.0.1", "--port", str(port),
        "--sha256", hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest(),
    ]  # fmt: skip
    return Server(label, port, command, env={"CANARYML_LOG_LEVEL": "warning", **env})


CANARYML_CONFIGS = {
    "canaryml": {},
    "canaryml-bare": {"CANARYML_DRIFT_ENABLED": "false", "CANARYML_METRICS_ENABLED": "false"},
    # The drift monitor's share: metrics on, drift off; and drift binning every row (no sampling).
    "canaryml-nodrift": {"CANARYML_DRIFT_ENABLED": "false"},
    "canaryml-allrows": {"CANARYML_DRIFT_SAMPLE_ROWS": "0"},
    "canaryml-sklearn": {"CANARYML_RUNTIME": "sklearn"},
    "canaryml-ids": {"CANARYML_FEEDBACK_KEY": FEEDBACK_KEY},
}


@contextmanager
def running(server: Server, url: str) -> Iterator[None]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        server.command,
        env={**os.environ, **server.env},
        cwd=server.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server.pid = process.pid
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode()[-3000:]
                raise RuntimeError(f"{server.label} exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.label} not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()


# --- load -------------------------------------------------------------------------------------


def labels_from(response: dict[str, Any]) -> list[Any]:
    outputs = {o["name"]: o for o in response["outputs"]}
    return list(outputs["predict"]["data"])


# --- in-process floor ---------------------------------------------------------------------------


def per_call_us(call: Any, *, budget_s: float = 1.0) -> float:
    call()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s or calls < 5:
        call()
        calls += 1
    return elapsed / calls * 1e6


def in_process_floor(model: Any, onnx_path: Path, rows: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    floats = rows.astype(np.float32)
    return {
        "sklearn_us": per_call_us(lambda: model.predict(rows)),
        "onnx_us": per_call_us(lambda: session.run(None, {name: floats})),
    }


def group_cpu_seconds(pgid: int) -> float:
    """User and system CPU of the live processes of a process group (Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # pgrp
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measured_load(server: Server, body: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measured wrk run, with the server's CPU per request: unlike requests/s, that hardly
    depends on what else runs on the machine (wrk's own CPU and other work are not counted)."""
    before = group_cpu_seconds(server.pid) if server.pid else None
    result = load(server.target, body, seconds=args.duration, args=args)
    if before is not None and result["rps"]:
        spent = group_cpu_seconds(server.pid) - before  # type: ignore[arg-type]
        result["cpu_us"] = spent / (result["rps"] * args.duration) * 1e6
    return result


# --- report ----------------------------------------------------------------------------------


def cpu_ratio(on: Result, off: Result) -> str:
    if on.cpu_us is None or not off.cpu_us:
        return "-"
    return f"{(on.cpu_us / off.cpu_us - 1) * 100:+.1f}% CPU/req"


def print_report(results: list[Result], floors: dict[str, dict[int, dict[str, float]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Serving throughput and latency (one worker each, 127.0.0.1)")
    for column in (
        "model",
        "rows",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "same labels",
        "CPU us/req",
    ):
        table.add_column(
            column,
            justify="right" if column not in ("model", "server") else "left",
            no_wrap=column == "server",  # canaryml-sklearn, canaryml-ids: never cut
        )
    for r in results:
        if r.server.startswith("feedback"):
            continue
        match = "-" if r.predictions_match is None else ("yes" if r.predictions_match else "NO")
        table.add_row(
            r.model, str(r.rows), r.server, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
            str(r.non_2xx + r.errors), match, "-" if r.cpu_us is None else f"{r.cpu_us:,.0f}",
        )  # fmt: skip
    console.print(table)

    ratios = Table(title="canaryml's ratios (req/s: higher is better; p99: lower is better)")
    for column in ("model", "rows", "vs", "req/s ratio", "p99 ratio", "CPU/req ratio"):
        ratios.add_column(column)
    by_key = {(r.model, r.rows, r.server): r for r in results}
    for model, rows in sorted({(r.model, r.rows) for r in results}):
        ours = by_key.get((model, rows, "canaryml"))
        if ours is None:
            continue
        for peer in ("mlserver", "kserve", "fastapi"):
            theirs = by_key.get((model, rows, peer))
            if theirs and theirs.rps:
                ratios.add_row(
                    model, str(rows), peer, f"{ours.rps / theirs.rps:.1f}x",
                    f"{ours.p99_ms / theirs.p99_ms:.2f}",
                )  # fmt: skip
        bare = by_key.get((model, rows, "canaryml-bare"))
        if bare and bare.rps:
            ratios.add_row(
                model, str(rows), "drift+metrics on vs off",
                f"{(ours.rps / bare.rps - 1) * 100:+.1f}% req/s",
                f"{ours.p99_ms / bare.p99_ms:.2f}", cpu_ratio(ours, bare),
            )  # fmt: skip
        allrows = by_key.get((model, rows, "canaryml-allrows"))
        if bare and bare.rps and allrows:
            ratios.add_row(
                model, str(rows), "drift (every row binned)+metrics on vs off",
                f"{(allrows.rps / bare.rps - 1) * 100:+.1f}% req/s",
                f"{allrows.p99_ms / bare.p99_ms:.2f}", cpu_ratio(allrows, bare),
            )  # fmt: skip
        nodrift = by_key.get((model, rows, "canaryml-nodrift"))
        for label, on in (("sampled", ours), ("every row", allrows)):
            if nodrift and nodrift.rps and on:
                ratios.add_row(
                    model, str(rows), f"drift ({label}) on vs off, metrics on",
                    f"{(on.rps / nodrift.rps - 1) * 100:+.1f}% req/s",
                    f"{on.p99_ms / nodrift.p99_ms:.2f}", cpu_ratio(on, nodrift),
                )  # fmt: skip
        ids = by_key.get((model, rows, "canaryml-ids"))
        if ids and ours.rps:
            ratios.add_row(
                model, str(rows), "prediction ids on vs off",
                f"{(ids.rps / ours.rps - 1) * 100:+.1f}% req/s",
                f"{ids.p99_ms / ours.p99_ms:.2f}",
            )  # fmt: skip
    console.print(ratios)

    feedback = [r for r in results if r.server.startswith("feedback")]
    if feedback:
        table = Table(title="Feedback endpoint (canaryml-ids server, ids verified every time)")
        for column in ("model", "ids per request", "req/s", "ids/s", "p50 ms", "p99 ms", "non-2xx"):
            table.add_column(column)
        for r in feedback:
            table.add_row(
                r.model, str(r.rows), f"{r.rps:,.0f}", f"{r.rps * r.rows:,.0f}",
                f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.non_2xx + r.errors),
            )  # fmt: skip
        console.print(table)

    floor = Table(title="In-process floor: one predict call, no HTTP")
    for column in ("model", "rows", "scikit-learn us", "onnxruntime us", "speed-up"):
        floor.add_column(column)
    for model, by_rows in floors.items():
        for rows, f in by_rows.items():
            floor.add_row(
                model, str(rows), f"{f['sklearn_us']:,.1f}", f"{f['onnx_us']:,.1f}",
                f"{f['sklearn_us'] / f['onnx_us']:.0f}x",
            )  # fmt: skip
    console.print(floor)


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of each measured run")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per server")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--servers",
        default="mlserver,kserve,fastapi,noop,canaryml,canaryml-bare,canaryml-sklearn",
        help="comma-separated subset to run",
    )
    parser.add_argument("--models", default="forest,pipeline")
    parser.add_argument("--batch", type=int, default=64, help="rows in the batch request")
    parser.add_argument(
        "--venv-dir", type=Path, default=Path.home() / ".cache" / "canaryml-bench" / "venvs"
    )
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    wanted = args.servers.split(",")

    with tempfile.TemporaryDirectory(prefix="canaryml-bench-") as tmp:
        work = Path(tmp)
        folders = train_models(work / "models")
        test = pd.read_csv(work / "models" / "test.csv").drop(columns=["target"]).to_numpy()
        batch = np.resize(test, (args.batch, test.shape[1]))
        payloads = {1: test[:1], args.batch: batch}
        pythons = {
            peer: peer_python(args.venv_dir, peer)
            for peer in ("mlserver", "kserve")
            if peer in wanted
        }
        results: list[Result] = []
        floors: dict[str, dict[int, dict[str, float]]] = {}
        for model_name in args.models.split(","):
            role = MODELS[model_name]
            joblib_path = work / "models" / f"{role}.joblib"
            model = joblib.load(joblib_path)
            floors[model_name] = {
                rows: in_process_floor(model, folders[role] / "model.onnx", data)
                for rows, data in payloads.items()
            }
            servers: list[Server] = []
            for label in wanted:
                port = free_port()
                if label == "mlserver":
                    servers.append(mlserver(pythons["mlserver"], joblib_path, work, port))
                elif label == "kserve":
                    servers.append(kserve(pythons["kserve"], joblib_path, port))
                elif label == "fastapi":
                    servers.append(bare_fastapi(joblib_path, port))
                elif label == "noop":
                    noop = bare_fastapi(joblib_path, port)
                    servers.append(Server("noop", port, noop.command, path="/noop"))
                elif label in CANARYML_CONFIGS:
                    servers.append(canaryml(folders[role], port, label, CANARYML_CONFIGS[label]))
            results += measure(servers, model, payloads, model_name, args)
        print_report(results, floors)
        if args.out:
            args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))


def measure(
    servers: list[Server],
    model: Any,
    payloads: dict[int, np.ndarray],
    model_name: str,
    args: argparse.Namespace,
) -> list[Result]:
    """All servers up at once (idle ones cost nothing); runs interleaved, median of repeats.

    Interleaving spreads this machine's drift in speed over every server alike, rather than
    over whichever happened to run during a slow minute.
    """
    results = []
    with ExitStack() as stack:
        for server in servers:
            print(f"{model_name}: starting {server.label}...", file=sys.stderr)
            stack.enter_context(running(server, server.url))
        for rows, data in payloads.items():
            body = v2_body(data)
            expected = model.predict(data).tolist()
            matches: dict[str, bool | None] = {}
            for server in servers:
                matches[server.label] = None
                if server.path == INFER_PATH:
                    response = httpx.post(
                        server.target, content=body,
                        headers={"content-type": "application/json"}, timeout=30,
                    )  # fmt: skip
                    response.raise_for_status()
                    matches[server.label] = labels_from(response.json()) == expected
                load(server.target, body, seconds=args.warmup, args=args)
            runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
            for round_ in range(args.repeats):
                print(f"{model_name}, {rows} rows: round {round_ + 1}/{args.repeats}",
                      file=sys.stderr)  # fmt: skip
                for server in servers:
                    runs[server.label].append(measured_load(server, body, args))
            for server in servers:
                measured = runs[server.label]
                results.append(
                    Result(
                        model=model_name, rows=rows, server=server.label,
                        rps=statistics.median(m["rps"] for m in measured),
                        p50_ms=statistics.median(m["p50_ms"] for m in measured),
                        p99_ms=statistics.median(m["p99_ms"] for m in measured),
                        non_2xx=sum(m["non_2xx"] for m in measured),
                        errors=sum(m["errors"] for m in measured),
                        predictions_match=matches[server.label],
                        cpu_us=(
                            statistics.median(m["cpu_us"] for m in measured)
                            if all("cpu_us" in m for m in measured) else None
                        ),
                    )
                )  # fmt: skip
        for server in servers:
            if server.label == "canaryml-ids":
                results += measure_feedback(server, payloads, model, model_name, args)
    return results


def measure_feedback(
    server: Server,
    payloads: dict[int, np.ndarray],
    model: Any,
    model_name: str,
    args: argparse.Namespace,
) -> list[Result]:
    """The feedback endpoint's throughput: one id per request, and a batch's ids at once.

    wrk sends the same body every time, so every request after the first is all duplicates:
    each id is still decoded and verified (HMAC, age, label) and looked up in the de-duplication
    memory, which is the work of every request; only the counters' increments are skipped.
    """
    rows = max(payloads)
    json_type = {"content-type": "application/json"}
    answer = httpx.post(server.target, content=v2_body(payloads[rows]), headers=json_type).json()
    ids = answer["parameters"]["prediction_ids"]
    truth = model.predict(payloads[rows]).tolist()
    items = [{"id": i, "label": t} for i, t in zip(ids, truth, strict=True)]
    bodies = {1: json.dumps(items[0]), rows: json.dumps({"feedback": items})}
    url = server.url + FEEDBACK_PATH
    results = []
    for count, body in bodies.items():
        first = httpx.post(url, content=body, headers=json_type)
        first.raise_for_status()
        load(url, body, seconds=args.warmup, args=args)
        measured = [load(url, body, seconds=args.duration, args=args) for _ in range(args.repeats)]
        results.append(
            Result(
                model=model_name, rows=count, server="feedback",
                rps=statistics.median(m["rps"] for m in measured),
                p50_ms=statistics.median(m["p50_ms"] for m in measured),
                p99_ms=statistics.median(m["p99_ms"] for m in measured),
                non_2xx=sum(m["non_2xx"] for m in measured),
                errors=sum(m["errors"] for m in measured),
            )
        )  # fmt: skip
    return results


def load(url: str, body: str, *, seconds: int, args: argparse.Namespace) -> dict[str, Any]:
    return wrk(url, body, seconds=seconds, connections=args.connections, threads=args.threads)


if __name__ == "__main__":
    main()
