"""The drift monitor's CPU per request, in process: off, every row binned, and sampled.

    python benchmarks/drift_cost.py [--rounds 30] [--calls 200] [--rows 1,64]

Trains and packages the example models, then times `DataPlane.infer` (parse, validate,
predict, drift; no HTTP, metrics off) on the serving benchmark's Open Inference Protocol v2
request, with drift off, with every row binned (CANARYML_DRIFT_SAMPLE_ROWS=0) and with the
default sample. CPU time of this process, the best of --rounds rounds of --calls calls per
setting, the settings interleaved round by round: other work on the machine shows less in CPU
time than in requests/s, and the best round is the one least disturbed by it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from canaryml_server.artifact import load_artifact
from canaryml_server.dataplane import DataPlane
from canaryml_server.drift import SAMPLE_ROWS
from canaryml_server.settings import ServerSettings
from common import train_models

SETTINGS: dict[str, dict[str, Any]] = {
    "drift off": {"drift_enabled": False},
    "every row binned": {"drift_sample_rows": 0},
    f"sampled ({SAMPLE_ROWS})": {},
}
MODELS = {"forest": "canary", "pipeline": "stable"}  # the roles of examples/train_models.py


def v2_payload(rows: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    parsed: dict[str, Any] = json.loads(
        json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
    )
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200, help="calls per round and setting")
    parser.add_argument("--rows", default="1,64", help="rows per request, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canaryml-drift-cost-") as tmp:
        work = Path(tmp)
        folders = train_models(work / "models")
        test = pd.read_csv(work / "models" / "test.csv").drop(columns=["target"]).to_numpy()
        print(f"{'model':<9} {'rows':>4}  " + "  ".join(f"{s:>26}" for s in SETTINGS))
        for model_name, role in MODELS.items():
            model = load_artifact(folders[role])
            for rows in map(int, args.rows.split(",")):
                payload = v2_payload(np.resize(test, (rows, test.shape[1])))
                planes = {
                    label: DataPlane(
                        model,
                        ServerSettings(
                            model_uri=str(folders[role]), metrics_enabled=False, **overrides
                        ),
                    )
                    for label, overrides in SETTINGS.items()
                }
                best = dict.fromkeys(planes, float("inf"))
                for _ in range(args.rounds):
                    for label, plane in planes.items():
                        start = time.process_time()
                        for _ in range(args.calls):
                            plane.infer(payload)
                        spent = (time.process_time() - start) / args.calls * 1e6
                        best[label] = min(best[label], spent)
                off = best["drift off"]
                cells = [f"{us:7.0f} us ({(us / off - 1) * 100:+6.1f} %)" for us in best.values()]
                print(f"{model_name:<9} {rows:>4}  " + "  ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
