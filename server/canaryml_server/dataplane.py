"""The model-facing half of the server: validate, predict, observe drift, describe the model.

No HTTP here: it takes parsed JSON and returns the bodies to send as plain values, and raises
InvalidInput (the client's fault, 4xx) or ModelFailure (the model's, 500). `endpoints` puts it
behind HTTP; `pipeline` is what every prediction request passes through on the way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from canaryml_server.artifact import LoadedModel, Manifest
from canaryml_server.drift import DriftMonitor
from canaryml_server.feedback import FeedbackDesk
from canaryml_server.prediction_ids import IdIssuer, IdVerifier
from canaryml_server.predictions import PredictionTally
from canaryml_server.protocol import (
    PREDICT_OUTPUT,
    PROBA_OUTPUT,
    build_inference_response,
    json_values,
    parse_inference_request,
)
from canaryml_server.runtime import Prediction
from canaryml_server.schema import Batch, FeatureKind, ValidationPolicy, validate_records
from canaryml_server.settings import ServerSettings

log = logging.getLogger("canaryml.server")


class ModelFailure(Exception):  # noqa: N818 - names the situation, like InvalidInput
    """The model raised on validated input: a server-side error (500), counted as such.

    Never a 4xx: validation already refused what the artifact's contract refuses (schema, and
    numbers beyond what the runtime represents), and estimators raise the same ValueError for
    their own defects as for odd numbers, so a 4xx would hide a broken canary from its 5xx rate.
    """


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Who answers: the settings may rename the artifact's model and version."""

    name: str
    version: str
    track: str
    deployment: str

    @classmethod
    def of(cls, manifest: Manifest, settings: ServerSettings) -> ModelIdentity:
        name = settings.model_name or manifest.name
        return cls(
            name=name,
            version=settings.model_version or manifest.version,
            track=settings.track,
            deployment=settings.model_deployment or name,
        )


class DataPlane:
    """One loaded, verified model and what the server does with it, HTTP aside."""

    def __init__(self, model: LoadedModel, settings: ServerSettings) -> None:
        self.model = model
        self.identity = ModelIdentity.of(model.manifest, settings)
        self.predictor = model.predictor
        self.policy = ValidationPolicy(
            allow_unknown_categories=settings.unknown_categories == "allow",
            max_rows=settings.max_batch_rows,
            max_magnitude=self.predictor.max_magnitude,
        )
        self.monitor: DriftMonitor | None = None
        if settings.drift_enabled:
            self.monitor = DriftMonitor(
                model.profile,
                feature_names=model.schema.names,
                window=settings.drift_window,
                sample_rows=settings.drift_sample_rows,
            )
        self.drift_min_rows = settings.drift_min_rows
        # Rows predicted per bin of the profile (canaryml_predictions_total), with the metrics.
        self.tally = PredictionTally(model.profile.prediction) if settings.metrics_enabled else None
        # Computed once: the model does not change while the server runs.
        self.metadata = model_metadata(model, self.identity)
        # Prediction ids and feedback: only with a key (none: no ids, feedback answers 409).
        self.issuer: IdIssuer | None = None
        self.feedback: FeedbackDesk | None = None
        keys = settings.feedback_keys()
        if keys:
            regression = model.manifest.task == "regression"
            identity = self.identity
            self.issuer = IdIssuer(
                keys[0],
                deployment=identity.deployment,
                track=identity.track,
                version=identity.version,
                regression=regression,
                classes=None if regression else model.manifest.classes,
            )
            verifier = IdVerifier(
                keys,
                deployment=identity.deployment,
                max_age_ms=round(settings.feedback_max_age * 1000),
            )
            self.feedback = FeedbackDesk(
                verifier,
                regression=regression,
                classes=None if regression else model.manifest.classes,
                max_items=settings.feedback_max_items,
                dedup_size=settings.feedback_dedup_size,
            )

    def prediction_ids(self, prediction: Prediction) -> list[str] | None:
        """One signed id per predicted row, or None when the server has no feedback key."""
        if self.issuer is None:
            return None
        return self.issuer.issue(prediction.labels, now_ms=time.time_ns() // 1_000_000)

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        """The model's answer to a validated batch, seen by the drift monitor."""
        try:
            prediction = self.predictor.predict(batch, probabilities=probabilities)
        except Exception as error:
            log.exception(
                "model %s %s failed on a validated batch",
                self.identity.name,
                self.identity.version,
            )
            raise ModelFailure(
                f"the model failed on this input ({type(error).__name__})"
            ) from error
        if self.monitor is not None:
            self.monitor.observe(batch, prediction.labels)
        if self.tally is not None:
            self.tally.observe(prediction.labels)
        return prediction

    def predict_records(self, payload: Any, *, probabilities: bool) -> dict[str, Any]:
        """The /predict body for one record or a list of them; probabilities when asked and had."""
        batch = validate_records(self.model.schema, payload, policy=self.policy)
        prediction = self.predict(
            batch, probabilities=probabilities and self.predictor.has_probabilities
        )
        identity = self.identity
        body: dict[str, Any] = {
            "model": identity.name,
            "version": identity.version,
            "track": identity.track,
            "predictions": json_values(prediction.labels),
        }
        if prediction.probabilities is not None:
            body["probabilities"] = prediction.probabilities
            body["classes"] = self.model.manifest.classes
        ids = self.prediction_ids(prediction)
        if ids is not None:
            body["ids"] = ids
        return body

    def infer(self, payload: Any) -> dict[str, Any]:
        """The Open Inference Protocol v2 response to an inference request."""
        parsed = parse_inference_request(
            payload,
            schema=self.model.schema,
            policy=self.policy,
            has_probabilities=self.predictor.has_probabilities,
        )
        prediction = self.predict(parsed.batch, probabilities=PROBA_OUTPUT in parsed.outputs)
        return build_inference_response(
            prediction=prediction,
            outputs=parsed.outputs,
            model_name=self.identity.name,
            model_version=self.identity.version,
            request_id=parsed.request_id,
            prediction_ids=self.prediction_ids(prediction),
        )

    def not_served(self, model_name: str, model_version: str | None = None) -> str | None:
        """Why this server does not serve that model (and version), or None when it does."""
        name, version = self.identity.name, self.identity.version
        if model_name != name:
            return f"model {model_name!r} not found; this is {name!r}"
        if model_version is not None and model_version != version:
            return f"version {model_version!r} of {name!r} not found; this is {version!r}"
        return None

    def drift_summary(self) -> dict[str, Any]:
        """The recent window's drift, per feature and of the predictions."""
        if self.monitor is None:
            return {"enabled": False}
        report = self.monitor.report()
        worst = report.worst_feature
        sampling = report.sampling
        return {
            "enabled": True,
            "rows": report.rows,
            "window": report.window,
            "min_rows": self.drift_min_rows,
            # The window holds rows binned: at most sample_rows of each request (0: all).
            "sampling": {
                "sample_rows": sampling.sample_rows,
                "rows_seen": sampling.rows_seen,
                "rows_binned": sampling.rows_binned,
                "fraction_binned": sampling.fraction,
            },
            "worst_feature": {"name": worst[0], "psi": worst[1]} if worst else None,
            "prediction": {"psi": report.prediction_psi, "js_distance": report.prediction_js},
            "features": {
                f: {"psi": report.feature_psi[f], "js_distance": report.feature_js[f]}
                for f in report.feature_psi
            },
        }


def model_metadata(model: LoadedModel, identity: ModelIdentity) -> dict[str, Any]:
    """The Open Inference Protocol v2 model metadata, with canaryml's own in `parameters`."""
    manifest, predictor = model.manifest, model.predictor
    outputs: list[dict[str, Any]] = [{"name": PREDICT_OUTPUT, "shape": [-1]}]
    if predictor.has_probabilities:
        classes = len(manifest.classes or [])
        outputs.append({"name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, classes]})
    return {
        "name": identity.name,
        "versions": [identity.version],
        "platform": "onnxruntime" if predictor.runtime == "onnx" else "scikit-learn",
        "inputs": [
            {"name": f.name, "datatype": _datatype(f.kind, f.dtype), "shape": [-1]}
            for f in model.schema.features
        ],
        "outputs": outputs,
        "parameters": {
            "runtime": predictor.runtime,
            "runtime_choice": manifest.runtime.model_dump(mode="json"),
            "estimator": manifest.estimator,
            "task": manifest.task,
            "classes": manifest.classes,
            "track": identity.track,
            "model_deployment": identity.deployment,
            "sha256": model.digest,
        },
    }


def _datatype(kind: FeatureKind, dtype: str) -> str:
    if kind is FeatureKind.NUMERIC:
        return "FP64"
    return "BOOL" if dtype == "bool" else "BYTES"


def server_metadata() -> dict[str, Any]:
    """The Open Inference Protocol v2 server metadata."""
    return {"name": "canaryml", "version": _package_version(), "extensions": []}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("canaryml")
    except PackageNotFoundError:
        return "0+unknown"
