"""The Open Inference Protocol's binary tensor extension against its JSON form, on one server.

    python benchmarks/oip_binary.py [--rows 64] [--duration 5] [--repeats 3] [--connections 16]

Trains and packages the example forest, starts one `canaryml serve` (one worker, 127.0.0.1),
checks the binary request answers the labels the JSON one does, then drives it with Debian's
`wrk` in turn, round after round, with the same rows sent as JSON (FP64 numbers) and in the
binary extension (FP64 bytes after a JSON header, the way KServe's Python client sends them by
default); each figure is the median of the rounds. The answers are JSON in both cases (the
client's default). Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from common import free_port, train_models

INFER = "/v2/models/breast-cancer/infer"


def bodies(rows: np.ndarray) -> tuple[bytes, bytes, int]:
    """The JSON body, the binary one and its JSON header's length."""
    as_json = json.dumps(
        {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                     "data": rows.ravel().tolist()}]}
    ).encode()  # fmt: skip
    raw = rows.astype("<f8").tobytes()
    header = json.dumps(
        {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                     "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    return as_json, header + raw, len(header)


def load(url: str, body: Path, headers: dict[str, str], args: argparse.Namespace) -> float:
    """Requests per second of wrk POSTing the file `body` with `headers`."""
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append(f'local f = io.open({json.dumps(str(body))}, "rb")')
    lines.append("wrk.body = f:read('*a')\nf:close()")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        done = subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-s", script.name,
             url],
            capture_output=True, text=True, check=True, timeout=args.duration + 60,
        )  # fmt: skip
    finally:
        Path(script.name).unlink()
    assert "Non-2xx" not in done.stdout, done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="canaryml-oip-binary-"))
    folder = train_models(work)["canary"]
    rows = pd.read_csv(work / "test.csv", nrows=args.rows).drop(columns=["target"]).to_numpy()
    as_json, binary, header_length = bodies(rows)
    (work / "json.body").write_bytes(as_json)
    (work / "binary.body").write_bytes(binary)
    binary_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }
    port = free_port()
    command = [
        sys.executable, "-m", "canaryml_cli", "serve", str(folder), "--host", "127.0.0.1",
        "--port", str(port),
        "--sha256", hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest(),
    ]  # fmt: skip
    env = {**os.environ, "CANARYML_LOG_LEVEL": "warning"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("canaryml serve did not start")
            time.sleep(0.1)
        a = httpx.post(url + INFER, content=as_json, headers={"Content-Type": "application/json"})
        b = httpx.post(url + INFER, content=binary, headers=binary_headers)
        assert a.json()["outputs"] == b.json()["outputs"], (a.text, b.text)
        json_headers = {"Content-Type": "application/json"}
        load(url + INFER, work / "json.body", json_headers, args)  # warm-up
        figures: dict[str, list[float]] = {"json": [], "binary": []}
        for _ in range(args.repeats):
            figures["json"].append(load(url + INFER, work / "json.body", json_headers, args))
            figures["binary"].append(load(url + INFER, work / "binary.body", binary_headers, args))
    finally:
        server.terminate()
        server.wait(timeout=15)
    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(f"{args.rows}-row batches, {len(as_json)} B as JSON, {len(binary)} B in binary")
    for name, value in medians.items():
        print(f"  {name:7s} {value:8.0f} requests/s  (rounds: {figures[name]})")
    print(f"  binary / JSON: {medians['binary'] / medians['json']:.2f}")


if __name__ == "__main__":
    main()
