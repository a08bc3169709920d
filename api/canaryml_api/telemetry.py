"""The names of the metrics contract: series, labels, label values and HTTP headers.

Each name is written here once. The model server and the router export these series, the
operator's checks query them, the dashboard and the alerts read them; docs/metrics.md lists
them with their labels, exporters and readers.
"""

from __future__ import annotations

from typing import Final

# --- series exported by the model servers and the builtin router ------------------------------
REQUESTS_TOTAL: Final = "canaryml_requests_total"  # counter: track, version, code, source
REQUEST_DURATION: Final = "canaryml_request_duration_seconds"  # histogram: track, version, source
REQUEST_DURATION_BUCKET: Final = f"{REQUEST_DURATION}_bucket"
FEATURE_DRIFT: Final = "canaryml_feature_drift"  # gauge per feature (PSI), servers only
PREDICTION_DRIFT: Final = "canaryml_prediction_drift"  # gauge (PSI), servers only
# gauge per feature, servers only: the calibrated test's p-value of the window against the
# reference, Holm-adjusted over the server's features (docs/judgment.md)
FEATURE_DRIFT_P_VALUE: Final = "canaryml_feature_drift_p_value"
PREDICTION_DRIFT_P_VALUE: Final = "canaryml_prediction_drift_p_value"  # gauge, servers only
DRIFT_WINDOW_ROWS: Final = "canaryml_drift_window_rows"
# counters, servers only: rows the drift monitor saw, and those it binned (at most
# CANARYML_DRIFT_SAMPLE_ROWS of each request); the window, PSI and p-values read rows binned only
DRIFT_ROWS_SEEN: Final = "canaryml_drift_rows_seen"
DRIFT_ROWS_BINNED: Final = "canaryml_drift_rows_binned"
# counter, servers only: rows predicted, by the prediction's bin (BIN_LABEL) in the model's
# reference profile; every bin of the profile exists from the start, at 0
PREDICTIONS_TOTAL: Final = "canaryml_predictions_total"
MODEL_INFO: Final = "canaryml_model_info"
SHADOW_COMPARISONS: Final = "canaryml_shadow_comparisons_total"  # router: track, version, result
ROUTER_CANARY_WEIGHT: Final = "canaryml_router_canary_weight"
ROUTER_SHADOW_PERCENT: Final = "canaryml_router_shadow_percent"
# counter, router: requests refused with 429 by the per-client rate limit (never counted in
# REQUESTS_TOTAL: a refused request reached no track, so it is no track's error or request)
ROUTER_RATE_LIMITED: Final = "canaryml_router_rate_limited_total"
# Feedback (true labels for earlier predictions, by prediction id), servers only. Labelled by the
# track and version the prediction id names, whichever replica took the feedback.
FEEDBACK_LABELS_TOTAL: Final = "canaryml_feedback_labels_total"  # counter: predictions labelled
FEEDBACK_CORRECT_TOTAL: Final = "canaryml_feedback_correct_total"  # counter, classifiers
# counters of sums, regressors: |true - predicted| and (true - predicted)^2 over labelled rows
FEEDBACK_ABSOLUTE_ERROR_TOTAL: Final = "canaryml_feedback_absolute_error_total"
FEEDBACK_SQUARED_ERROR_TOTAL: Final = "canaryml_feedback_squared_error_total"
FEEDBACK_DELAY: Final = "canaryml_feedback_delay_seconds"  # histogram: prediction to label
# counter: feedback items refused (a body that could not be read counts once), by REASON_LABEL;
# labelled with the server's own track and version (a refused id's are not to be trusted)
FEEDBACK_REJECTED_TOTAL: Final = "canaryml_feedback_rejected_total"
# Held-out figures of the served artifact (`canaryml package --evaluate`, the manifest's
# `evaluation`), servers only. A gauge per recorded figure, by METRIC_LABEL (no series when the
# manifest records none); and the held-out rows they were computed on, labelled by the held-out
# data's sha256 (HELDOUT_SHA256_LABEL): one series at 0 without a digest when the manifest
# records no evaluation, so that "none recorded" differs from "not scraped yet".
OFFLINE_EVALUATION: Final = "canaryml_offline_evaluation"
OFFLINE_EVALUATION_ROWS: Final = "canaryml_offline_evaluation_rows"

# --- series exported by the operator ----------------------------------------------------------
# The two counters are named as prometheus_client declares them; they are exposed with `_total`.
OPERATOR_CANARY_WEIGHT: Final = "canaryml_operator_canary_weight"
OPERATOR_PHASE: Final = "canaryml_operator_phase"
OPERATOR_STALLED: Final = "canaryml_operator_stalled"
OPERATOR_HELD_ANALYSES: Final = "canaryml_operator_held_analyses"
OPERATOR_ANALYSES: Final = "canaryml_operator_analyses"
OPERATOR_ROLLOUTS: Final = "canaryml_operator_rollouts"
# counters: lifecycle webhook attempts by RESULT_LABEL (passed, failed), notifications by
# RESULT_LABEL (sent, dropped by the rate limit), as status.webhooks and status.notifications
# record them
OPERATOR_WEBHOOK_ATTEMPTS: Final = "canaryml_operator_webhook_attempts"
OPERATOR_NOTIFICATIONS: Final = "canaryml_operator_notifications"

# --- labels -----------------------------------------------------------------------------------
MODEL_DEPLOYMENT_LABEL: Final = "model_deployment"
NAMESPACE_LABEL: Final = "namespace"
TRACK_LABEL: Final = "track"
VERSION_LABEL: Final = "version"
CODE_LABEL: Final = "code"
SOURCE_LABEL: Final = "source"
FEATURE_LABEL: Final = "feature"  # which input feature a FEATURE_DRIFT series is about
RESULT_LABEL: Final = "result"
# Which bin of the model's reference profile a PREDICTIONS_TOTAL series counts: a classifier's
# class as text (`str` of the label: "1", "setosa"); a regressor's bin by its upper edge, the
# bin holding values below it (bucket_label's format: "12.5"; the last bin "+Inf"); a missing
# prediction (None, NaN) MISSING_BIN.
BIN_LABEL: Final = "bin"
MODEL_LABEL: Final = "model"
RUNTIME_LABEL: Final = "runtime"
PHASE_LABEL: Final = "phase"  # the operator's phase gauge: one series per phase
VERDICT_LABEL: Final = "verdict"  # the operator's analyses counter: the overall verdict
REASON_LABEL: Final = "reason"  # why FEEDBACK_REJECTED_TOTAL refused an item
METRIC_LABEL: Final = "metric"  # which held-out figure an OFFLINE_EVALUATION series is
HELDOUT_SHA256_LABEL: Final = "heldout_sha256"  # the held-out data of OFFLINE_EVALUATION_ROWS
LE_LABEL: Final = "le"  # a histogram bucket's upper bound (Prometheus's own label)

# Both the router and the servers count requests; `source` says whose view a series is, so a
# query picks one and never counts a request twice.
SOURCE_ROUTER: Final = "router"
SOURCE_SERVER: Final = "server"

# RESULT_LABEL values of SHADOW_COMPARISONS. "error": an answer could not be read or compared;
# "skipped": no comparison was made (too many mirrors in flight).
COMPARISON_RESULTS: Final = ("agree", "disagree", "error", "skipped")

MISSING_BIN: Final = "NaN"

# REASON_LABEL values of FEEDBACK_REJECTED_TOTAL (a bounded set). "body": unreadable, not JSON,
# too large or of the wrong shape; "too_many": more items than the server takes at once;
# "malformed": not a prediction id; "unknown_key": signed with a key the server does not hold;
# "tampered": the signature does not match; "other_deployment": issued by another
# ModelDeployment's servers; "expired": older than the allowed age; "label": the true label is
# not one of the model's classes, or not a finite number for a regressor; "no_key": the server
# has no feedback key.
FEEDBACK_REJECT_REASONS: Final = (
    "body", "too_many", "malformed", "unknown_key", "tampered", "other_deployment", "expired",
    "label", "no_key",
)  # fmt: skip

# METRIC_LABEL values of OFFLINE_EVALUATION: the names `canaryml package --evaluate` records
# them under (scikit-learn's scorer names, the figure as computed), the larger the better, and
# the errors, the smaller the better.
OFFLINE_HIGHER_IS_BETTER: Final = ("accuracy", "f1", "f1_macro", "roc_auc", "roc_auc_ovr", "r2")
OFFLINE_LOWER_IS_BETTER: Final = ("log_loss", "mae", "rmse")

# CODE_LABEL of a request whose client left before its answer (nginx's "client closed request"):
# counted so that nothing is lost, never sent, and never the track's error.
CLIENT_CLOSED: Final = 499

# Histogram buckets of REQUEST_DURATION, in seconds, the same for every exporter so that one
# histogram_quantile reads them all. Fine at the low end: a compiled model answers in well
# under a millisecond.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# Histogram buckets of FEEDBACK_DELAY, in seconds: from a second (a label known at once) to a
# week (the default longest age of a prediction id).
FEEDBACK_DELAY_BUCKETS: Final = (
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 2 * 86400.0,
    4 * 86400.0, 7 * 86400.0,
)  # fmt: skip


def bucket_label(bound: float) -> str:
    """The `le` label value of a bucket bound as the exporters write it (prometheus_client's
    Go float format: `0.25`, `1.0`, `+Inf`; the same as Python's repr below 1e16)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


# --- HTTP headers (lowercase, as ASGI carries them) -------------------------------------------
# On an answer: the model version that answered. On a request through the builtin router: the
# version that must answer (a version pin, as the path /v2/models/NAME/versions/VERSION/... is).
VERSION_HEADER: Final = "x-canaryml-model-version"
TRACK_HEADER: Final = "x-canaryml-track"  # the track the router sent the request to
# model server, on a prediction answer: the answer's prediction ids, comma-joined, when they fit
# in PREDICTION_IDS_HEADER_MAX_BYTES (else absent: the body is authoritative)
PREDICTION_IDS_HEADER: Final = "x-canaryml-prediction-ids"
PREDICTION_IDS_HEADER_MAX_BYTES: Final = 4096
# operator, on a lifecycle webhook's or notification's POST: "sha256=<hex HMAC-SHA256 of the
# body>" under the key of the hook's secretRef (absent without one)
WEBHOOK_SIGNATURE_HEADER: Final = "x-canaryml-signature"
# Open Inference Protocol, binary tensor extension (Triton's, KServe's, MLServer's): on a request
# or an answer whose body is a JSON header then raw tensors, the JSON header's length in bytes
INFERENCE_HEADER_LENGTH_HEADER: Final = "inference-header-content-length"
