"""A bare FastAPI app calling scikit-learn: what a hand-written model service looks like.

    python fastapi_server.py MODEL.joblib PORT

`POST /v2/models/breast-cancer/infer` takes the same Open Inference Protocol request as the
other servers; `POST /noop` answers a constant, to show the HTTP stack's own ceiling.
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import numpy as np
import uvicorn
from fastapi import FastAPI, Request

model = joblib.load(sys.argv[1])
app = FastAPI()


@app.post("/v2/models/breast-cancer/infer")
async def infer(request: Request) -> dict[str, Any]:
    body = await request.json()
    tensor = body["inputs"][0]
    features = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    labels = model.predict(features)
    return {
        "model_name": "breast-cancer",
        "outputs": [
            {"name": "predict", "shape": [len(labels)], "datatype": "INT64",
             "data": labels.tolist()}
        ],
    }  # fmt: skip


@app.post("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)  # fmt: skip
