"""A KServe ModelServer wrapping the same joblib model, as a KServe custom predictor does.

    python kserve_server.py MODEL.joblib PORT

Answers the Open Inference Protocol v2 (`/v2/models/breast-cancer/infer`) with the labels.
Run with the kserve environment's interpreter; gRPC is off, every other setting is KServe's
default (one worker).
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class SklearnModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.model = joblib.load(path)
        self.ready = True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            features = payload.inputs[0].as_numpy()
            labels = np.asarray(self.model.predict(features))
            output = InferOutput(
                name="predict", shape=list(labels.shape), datatype="INT64", data=labels.tolist()
            )
            return InferResponse(
                response_id=payload.id or "", model_name=self.name, infer_outputs=[output]
            )
        return {"predictions": self.model.predict(np.asarray(payload["instances"])).tolist()}


if __name__ == "__main__":
    model = SklearnModel("breast-cancer", sys.argv[1])
    ModelServer(http_port=int(sys.argv[2]), workers=1, enable_grpc=False).start([model])
