"""What the benchmarks share: free ports, the example models, and a `wrk` run parsed.

The scripts run as `python benchmarks/NAME.py`, so this folder is on their import path.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def train_models(out: Path) -> dict[str, Path]:
    """The example models, trained and packaged by examples/train_models.py."""
    spec = importlib.util.spec_from_file_location("train_models", ROOT / "examples/train_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folders: dict[str, Path] = module.train(out)
    return folders


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percentile}% latency in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    body: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    cpu: int | None = None,
) -> dict[str, Any]:
    """POST `body` as JSON to `url` with Debian's wrk (pinned to `cpu` when given): requests/s,
    p50 and p99 in ms, non-2xx answers and socket errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--latency",
        "-s", script.name, url,
    ]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 60
        )
    finally:
        Path(script.name).unlink()
    text = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": _latency_ms(text, "50"),
        "p99_ms": _latency_ms(text, "99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }
