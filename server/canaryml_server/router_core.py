"""The router's decisions as pure functions: which track answers, whether to mirror, whether the
shadow agreed, and the routing table a ModelDeployment object stands for.

No I/O here, so every rule of the data plane is unit-tested with plain values; the ASGI app in
`router.py` only feeds them the request's header and a random draw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Track = Literal["stable", "canary", "shadow"]
LiveTrack = Literal["stable", "canary"]
Comparison = Literal["agree", "disagree", "error"]
TRACKS: tuple[Track, ...] = ("stable", "canary", "shadow")
DEFAULT_PROBABILITY_TOLERANCE = 0.05
# Sticky values fall into one of this many buckets; weight w (percent) takes the first w * 100.
BUCKETS = 10_000
_PER_PERCENT = BUCKETS // 100
PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"


@dataclass(frozen=True)
class RoutingTable:
    """Where requests of one ModelDeployment go: replaced as a whole when the weights change.

    Being immutable, a request reads one consistent table even while a watch swaps in the next.
    """

    upstreams: Mapping[str, str]
    canary_weight: int = 0
    shadow_percent: int = 0
    sticky_header: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    probability_tolerance: float = DEFAULT_PROBABILITY_TOLERANCE

    def __post_init__(self) -> None:
        if not 0 <= self.canary_weight <= 100:
            raise ValueError(f"canary weight must be 0..100, got {self.canary_weight}")
        if not 0 <= self.shadow_percent <= 100:
            raise ValueError(f"shadow percent must be 0..100, got {self.shadow_percent}")
        if not 0 <= self.probability_tolerance <= 1:
            raise ValueError(
                f"probability tolerance must be 0..1, got {self.probability_tolerance}"
            )
        unknown = sorted(set(self.upstreams) - set(TRACKS)) + sorted(
            set(self.versions) - set(TRACKS)
        )
        if unknown:
            raise ValueError(f"unknown track(s) {unknown}: use stable, canary or shadow")
        if "stable" not in self.upstreams:
            raise ValueError("the stable track needs an upstream")

    @property
    def canary_active(self) -> bool:
        """The canary takes traffic only with a weight and somewhere to send it."""
        return self.canary_weight > 0 and "canary" in self.upstreams

    @property
    def shadow_active(self) -> bool:
        return self.shadow_percent > 0 and "shadow" in self.upstreams

    def version(self, track: str) -> str:
        """The version to label a track's series with when its server does not say."""
        return self.versions.get(track, "unknown")

    def as_json(self) -> dict[str, Any]:
        return {
            "canaryWeight": self.canary_weight,
            "shadowPercent": self.shadow_percent,
            "stickyHeader": self.sticky_header,
            "probabilityTolerance": self.probability_tolerance,
            "upstreams": dict(self.upstreams),
            "versions": dict(self.versions),
        }


def sticky_bucket(value: str) -> int:
    """A bucket in [0, BUCKETS) that depends on the value only: the same in every process and
    every release (blake2b, unlike Python's salted `hash`), so a user keeps their track across
    router replicas and restarts."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_track(table: RoutingTable, *, sticky_value: str | None, draw: float) -> LiveTrack:
    """stable or canary for one request.

    With a sticky value the bucket decides, and the canary takes buckets [0, weight * 100): a
    user in the canary at one weight stays there at every larger weight, so stepping up never
    moves a user back and forth. Without one, `draw` (uniform in [0, 1)) decides.
    """
    if not table.canary_active:
        return "stable"
    if sticky_value is not None and table.sticky_header is not None:
        in_canary = sticky_bucket(sticky_value) < table.canary_weight * _PER_PERCENT
    else:
        in_canary = draw * 100 < table.canary_weight
    return "canary" if in_canary else "stable"


def should_mirror(*, percent: int, draw: float) -> bool:
    """Whether this request is also sent to the shadow; `draw` is uniform in [0, 1)."""
    return draw * 100 < percent


# --- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The predicted labels and per-row class probabilities of one response, either format."""

    labels: list[Any] | None
    probabilities: list[list[float]] | None


def parse_answer(body: bytes) -> Answer:
    """Labels and probabilities of a `/predict` or Open Inference Protocol v2 response.

    Raises ValueError for anything else: an answer that cannot be read cannot agree.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if "predictions" in document:
        return _predict_answer(document)
    if "outputs" in document:
        return _v2_answer(document)
    raise ValueError("neither a /predict nor a v2 inference response")


def _predict_answer(document: dict[str, Any]) -> Answer:
    labels = document["predictions"]
    if not isinstance(labels, list):
        raise ValueError("predictions is not a list")
    probabilities = document.get("probabilities")
    if probabilities is not None:
        probabilities = _rows(probabilities)
    return Answer(labels=labels, probabilities=probabilities)


def _v2_answer(document: dict[str, Any]) -> Answer:
    outputs = document["outputs"]
    if not isinstance(outputs, list):
        raise ValueError("outputs is not a list")
    by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    labels: list[Any] | None = None
    probabilities: list[list[float]] | None = None
    if PREDICT_OUTPUT in by_name:
        labels = by_name[PREDICT_OUTPUT].get("data")
        if not isinstance(labels, list):
            raise ValueError("the predict output has no data list")
    if PROBA_OUTPUT in by_name:
        tensor = by_name[PROBA_OUTPUT]
        data, shape = tensor.get("data"), tensor.get("shape")
        if not isinstance(data, list) or not isinstance(shape, list) or len(shape) != 2:
            raise ValueError("the predict_proba output needs data and a 2-d shape")
        width = int(shape[1])
        if width <= 0 or len(data) % width:
            raise ValueError("predict_proba data does not fit its shape")
        probabilities = _rows([data[i : i + width] for i in range(0, len(data), width)])
    if labels is None and probabilities is None:
        raise ValueError("no predict or predict_proba output")
    return Answer(labels=labels, probabilities=probabilities)


def _rows(value: Any) -> list[list[float]]:
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise ValueError("probabilities are not a list of rows")
    return [[float(p) for p in row] for row in value]


def _argmax(rows: list[list[float]]) -> list[int]:
    return [max(range(len(row)), key=row.__getitem__) if row else -1 for row in rows]


def compare_answers(*, live: bytes, shadow: bytes, tolerance: float) -> Comparison:
    """agree: same class for every row and every probability within `tolerance`; disagree
    otherwise; error when either answer cannot be read.

    When one side has no labels (a v2 request that asked for predict_proba only), the classes
    compared are the most probable ones of each row.
    """
    try:
        mine, theirs = parse_answer(live), parse_answer(shadow)
    except (ValueError, TypeError, KeyError):
        return "error"
    labels_a, labels_b = mine.labels, theirs.labels
    if labels_a is None or labels_b is None:
        if mine.probabilities is None or theirs.probabilities is None:
            return "error"
        labels_a, labels_b = _argmax(mine.probabilities), _argmax(theirs.probabilities)
    if labels_a != labels_b:
        return "disagree"
    if (
        mine.probabilities is not None
        and theirs.probabilities is not None
        and not _close(mine.probabilities, theirs.probabilities, tolerance=tolerance)
    ):
        return "disagree"
    return "agree"


def _close(a: list[list[float]], b: list[list[float]], *, tolerance: float) -> bool:
    if len(a) != len(b):
        return False
    for row_a, row_b in zip(a, b, strict=True):
        if len(row_a) != len(row_b):
            return False
        for p, q in zip(row_a, row_b, strict=True):
            # A hair of slack so that a tolerance of 0.05 accepts a difference of exactly 0.05.
            if not math.isfinite(p) or not math.isfinite(q) or abs(p - q) > tolerance + 1e-12:
                return False
    return True


# --- the ModelDeployment object ------------------------------------------------------------------


def default_upstream(*, name: str, track: str) -> str:
    """The operator's Service of the track (port 80), resolved in the router's own namespace."""
    return f"http://{name}-{track}"


def table_from_model_deployment(
    obj: Mapping[str, Any], *, upstreams: Mapping[str, str] | None = None
) -> RoutingTable:
    """The routing table a ModelDeployment object (as the API returns it) stands for.

    canary weight: status.canaryWeight while spec.canary is set, else 0; shadow percent:
    spec.shadow.percent while spec.shadow is set, else 0. Upstreams are the operator's Services
    NAME-TRACK unless `upstreams` overrides a track; a track the spec does not have gets none.
    Raises ValueError when the object cannot be read.
    """
    metadata = _mapping(obj.get("metadata"), "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the object has no metadata.name")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    model = _mapping(spec.get("model"), "spec.model")
    canary = _optional_mapping(spec.get("canary"), "spec.canary")
    shadow = _optional_mapping(spec.get("shadow"), "spec.shadow")
    routing = _mapping(spec.get("routing"), "spec.routing")

    present: list[Track] = ["stable"]
    versions: dict[str, str] = {}
    stable_version = status.get("stableVersion") or model.get("version")
    if stable_version is not None:
        versions["stable"] = str(stable_version)
    canary_weight = 0
    if canary is not None:
        present.append("canary")
        canary_weight = _int(status.get("canaryWeight", 0), "status.canaryWeight")
        version = _mapping(canary.get("model"), "spec.canary.model").get("version")
        if version is not None:
            versions["canary"] = str(version)
    shadow_percent = 0
    tolerance = DEFAULT_PROBABILITY_TOLERANCE
    if shadow is not None:
        present.append("shadow")
        shadow_percent = _int(shadow.get("percent", 100), "spec.shadow.percent")
        raw_tolerance = shadow.get("probabilityTolerance", DEFAULT_PROBABILITY_TOLERANCE)
        if isinstance(raw_tolerance, bool) or not isinstance(raw_tolerance, int | float):
            raise ValueError("spec.shadow.probabilityTolerance is not a number")
        tolerance = float(raw_tolerance)
        version = _mapping(shadow.get("model"), "spec.shadow.model").get("version")
        if version is not None:
            versions["shadow"] = str(version)
    overrides = upstreams or {}
    sticky = routing.get("stickyHeader")
    return RoutingTable(
        upstreams={t: overrides.get(t) or default_upstream(name=name, track=t) for t in present},
        canary_weight=canary_weight,
        shadow_percent=shadow_percent,
        sticky_header=str(sticky) if sticky else None,
        versions=versions,
        probability_tolerance=tolerance,
    )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} is not an object")
    return value


def _optional_mapping(value: Any, where: str) -> Mapping[str, Any] | None:
    return None if value is None else _mapping(value, where)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} is not an integer: {value!r}")
    return value
