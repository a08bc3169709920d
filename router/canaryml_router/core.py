"""The router's decisions as pure functions: which track answers, whether to mirror, whether the
shadow agreed, and the routing table a ModelDeployment object stands for.

No I/O here (an import-linter contract holds it), so every rule of the data plane is
unit-tested with plain values; the proxy (`proxy.py`) and the mirror (`mirror.py`) only feed
them the request's header, a random draw and the answers.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson
from canaryml_api import resource
from canaryml_api.resource import DEFAULT_PROBABILITY_TOLERANCE, MAX_REGEX_MATCHED_LENGTH
from canaryml_api.routing import RoutingPlan, plan_routing
from canaryml_api.telemetry import INFERENCE_HEADER_LENGTH_HEADER
from canaryml_api.tracks import TRACKS as TRACKS
from canaryml_api.tracks import LiveTrack, service_url

Comparison = Literal["agree", "disagree", "error"]
# Sticky values fall into one of this many buckets; weight w (percent) takes the first w * 100.
BUCKETS = 10_000
_PER_PERCENT = BUCKETS // 100
PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"
_BINARY_HEADER = INFERENCE_HEADER_LENGTH_HEADER.encode("latin-1")


@dataclass(frozen=True)
class SegmentRule:
    """One A/B segment rule (`spec.routing.canaryMatch`), ready to test a request's headers:
    `header` (lowercase, as ASGI carries names) with an exact `value` or a `regex` the whole
    value matches, or `cookie` with an exact `value`."""

    header: bytes | None = None
    cookie: bytes | None = None
    value: bytes | None = None
    regex: re.Pattern[str] | None = None

    @classmethod
    def of(cls, match: resource.CanaryMatch) -> SegmentRule:
        """The rule of a validated spec entry (its regex already checked for safety)."""
        return cls(
            header=match.header.lower().encode("latin-1") if match.header else None,
            cookie=match.cookie.encode("latin-1") if match.cookie else None,
            value=match.value.encode("latin-1", "replace") if match.value is not None else None,
            regex=re.compile(match.regex) if match.regex is not None else None,
        )

    @property
    def wanted(self) -> bytes:
        """The request header this rule reads."""
        return self.header if self.header is not None else b"cookie"

    def matches(self, values: Sequence[bytes]) -> bool:
        """Whether any value of the header it reads (every line of it) matches."""
        if self.cookie is not None:
            return any(cookie_value(line, self.cookie) == self.value for line in values)
        if self.regex is not None:
            pattern = self.regex
            return any(
                len(v) <= MAX_REGEX_MATCHED_LENGTH
                and pattern.fullmatch(v.decode("latin-1")) is not None
                for v in values
            )
        return self.value in values


def cookie_value(line: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in one Cookie header (`a=1; b=2`), or None."""
    for pair in line.split(b";"):
        key, sep, value = pair.strip().partition(b"=")
        if sep and key == name:
            return value
    return None


def in_segment(rules: Sequence[SegmentRule], headers: Mapping[bytes, Sequence[bytes]]) -> bool:
    """Whether a request whose headers (by lowercase name) are `headers` is in an A/B segment:
    any rule matches."""
    for rule in rules:
        values = headers.get(rule.wanted)
        if values and rule.matches(values):
            return True
    return False


@dataclass(frozen=True)
class RateLimit:
    """Each client may make `requests_per_second` requests a second, sustained, and `burst` at
    once (a token bucket of `burst` tokens refilled at that rate). The client is named by
    `client_header`'s value (lowercase name), else by its address."""

    requests_per_second: float
    burst: int
    client_header: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.requests_per_second) and self.requests_per_second > 0):
            raise ValueError(f"requests per second must be above 0, got {self.requests_per_second}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    @classmethod
    def of(
        cls, requests_per_second: float, burst: int | None, client_header: str | None
    ) -> RateLimit:
        """With the default burst: the rate rounded up, at least 1."""
        return cls(
            requests_per_second=requests_per_second,
            burst=burst if burst is not None else max(1, math.ceil(requests_per_second)),
            client_header=client_header.lower() if client_header else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "requestsPerSecond": self.requests_per_second,
            "burst": self.burst,
            "clientHeader": self.client_header,
        }


class Bucket(NamedTuple):
    """One client's token bucket: `tokens` left at time `at` (seconds, any monotonic clock)."""

    tokens: float
    at: float


def take_token(bucket: Bucket | None, limit: RateLimit, now: float) -> tuple[Bucket, float | None]:
    """The bucket after one request at `now`, and None when the request may go, else the
    seconds until it could (the bucket then unchanged but refilled to `now`). A client seen for
    the first time (None) starts with a full bucket; a clock going back refills nothing."""
    if bucket is None:
        tokens = float(limit.burst)
    else:
        elapsed = max(0.0, now - bucket.at)
        tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.requests_per_second)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), None
    return Bucket(tokens, now), (1.0 - tokens) / limit.requests_per_second


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
    # Whether A/B segments and version pins may reach the canary (its rollout runs: see
    # `canaryml_api.routing`); static tables have it whenever they have a canary upstream.
    canary_serving: bool = True
    segments: tuple[SegmentRule, ...] = ()
    rate_limit: RateLimit | None = None
    # Blue-green's preview mirror: the stable's live prediction requests also go to the canary
    # (counted as its requests, not compared), while it takes no live traffic.
    canary_mirror: bool = False

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
    def canary_available(self) -> bool:
        """Whether segment-matched and version-pinned requests may go to the canary (also at
        weight 0)."""
        return self.canary_serving and "canary" in self.upstreams

    def served_versions(self) -> dict[LiveTrack, str]:
        """The versions clients may pin, by live track: the stable's, and the canary's while it
        is available (never the shadow's)."""
        served: dict[LiveTrack, str] = {"stable": self.version("stable")}
        if self.canary_available:
            served["canary"] = self.version("canary")
        return served

    @property
    def canary_mirror_active(self) -> bool:
        """Whether the stable's live requests are mirrored to the preview (the canary at 0%)."""
        return self.canary_mirror and self.canary_available and not self.canary_active

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
            "canaryServing": self.canary_available,
            "canaryMatch": [_segment_json(rule) for rule in self.segments],
            "rateLimit": self.rate_limit.as_json() if self.rate_limit else None,
            "canaryMirror": self.canary_mirror_active,
        }


def _segment_json(rule: SegmentRule) -> dict[str, str]:
    shown: dict[str, str] = {}
    if rule.cookie is not None:
        shown["cookie"] = rule.cookie.decode("latin-1")
    elif rule.header is not None:
        shown["header"] = rule.header.decode("latin-1")
    if rule.regex is not None:
        shown["regex"] = rule.regex.pattern
    elif rule.value is not None:
        shown["value"] = rule.value.decode("latin-1")
    return shown


ApplyTable = Callable[[RoutingTable], None]
"""Routes every request from now on by the table it is given (the app's `set_table`)."""
WeightSource = Callable[[ApplyTable], Awaitable[None]]
"""Runs for the router's lifetime and calls its argument with each new routing table."""


def sticky_bucket(value: str) -> int:
    """A bucket in [0, BUCKETS) that depends on the value only: the same in every process and
    every release (blake2b, unlike Python's salted `hash`), so a user keeps their track across
    router replicas and restarts."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_track(
    table: RoutingTable, *, sticky_value: str | None, draw: float, segment: bool = False
) -> LiveTrack:
    """stable or canary for one request.

    A request in an A/B segment (`segment`, from `in_segment`) goes to the canary whenever it is
    available, whatever its weight (0 included); its sticky value plays no part. Otherwise (no
    canary, or one rolled back) it is routed as any other request, and a request outside every
    segment keeps the sticky hashing below.

    With a sticky value the bucket decides, and the canary takes buckets [0, weight * 100): a
    user in the canary at one weight stays there at every larger weight, so stepping up never
    moves a user back and forth. Without one, `draw` (uniform in [0, 1)) decides.
    """
    if segment and table.canary_available:
        return "canary"
    if not table.canary_active:
        return "stable"
    if sticky_value is not None and table.sticky_header is not None:
        in_canary = sticky_bucket(sticky_value) < table.canary_weight * _PER_PERCENT
    else:
        in_canary = draw * 100 < table.canary_weight
    return "canary" if in_canary else "stable"


def is_prediction(method: str, path: str) -> bool:
    """Whether a request is a prediction: POST /predict, /v2/models/NAME/infer or
    /v2/models/NAME/versions/VERSION/infer (the model server's prediction routes, `path` decoded
    as the server routes on it). Only these are counted in the request metrics and mirrored: any
    other request (a junk path, a health check) says nothing about a model's error rate, and
    counting it would dilute a failing canary's."""
    if method != "POST":
        return False
    if path == "/predict":
        return True
    parts = path.split("/")
    # "", "v2", "models", NAME, "infer" or "", "v2", "models", NAME, "versions", VERSION, "infer"
    if len(parts) not in (5, 7) or parts[:3] != ["", "v2", "models"] or parts[-1] != "infer":
        return False
    return all(parts[3:-1]) and (len(parts) == 5 or parts[4] == "versions")


def path_version(path: str) -> str | None:
    """The version a path pins, /v2/models/NAME/versions/VERSION[/...], else None."""
    if not path.startswith("/v2/models/"):
        return None
    parts = path.split("/", 7)
    if len(parts) < 6 or parts[4] != "versions" or not parts[3] or not parts[5]:
        return None
    return parts[5]


def pinned_track(table: RoutingTable, version: str) -> LiveTrack | None:
    """The live track serving `version` (the stable when both do), or None when none does:
    a client pinned to a version reaches it whatever the weights, for as long as it is served."""
    for track, served in table.served_versions().items():
        if served == version:
            return track
    return None


def should_mirror(*, percent: int, draw: float) -> bool:
    """Whether this request is also sent to the shadow; `draw` is uniform in [0, 1)."""
    return draw * 100 < percent


# --- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The predicted labels and per-row class probabilities of one response, either format."""

    labels: list[Any] | None
    probabilities: list[list[float]] | None


def parse_answer(body: bytes, json_length: int | None = None) -> Answer:
    """Labels and probabilities of a `/predict` or Open Inference Protocol v2 response, JSON or
    in the binary tensor extension (`json_length`: its Inference-Header-Content-Length).

    Raises ValueError for anything else: an answer that cannot be read cannot agree.
    """
    head = body if json_length is None else body[:json_length]
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if json_length is not None:
        _read_binary_outputs(document, body, json_length)
    if "predictions" in document:
        return _predict_answer(document)
    if "outputs" in document:
        return _v2_answer(document)
    raise ValueError("neither a /predict nor a v2 inference response")


# The binary extension's fixed-size types, as `struct` formats (little-endian).
_BINARY_FORMATS = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b",
    "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip


def json_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """An answer's Inference-Header-Content-Length (names lower-case), None when absent.

    Raises ValueError when it is not a length."""
    for name, value in headers:
        if name == _BINARY_HEADER:
            if not value.strip().isdigit():
                raise ValueError(f"bad {_BINARY_HEADER.decode()}: {value!r}")
            return int(value)
    return None


def _read_binary_outputs(document: dict[str, Any], body: bytes, start: int) -> None:
    """Each output sent in binary (`parameters.binary_data_size`) decoded into its `data`."""
    outputs = document.get("outputs")
    offset = start
    for tensor in outputs if isinstance(outputs, list) else ():
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise ValueError("a binary output's size does not fit the body")
        raw = body[offset : offset + size]
        offset += size
        datatype = tensor.get("datatype")
        if datatype == "BYTES":
            tensor["data"] = _bytes_items(raw)
        elif datatype in _BINARY_FORMATS:
            code = _BINARY_FORMATS[datatype]
            width = struct.calcsize(code)
            if size % width:
                raise ValueError(f"{size} bytes are no whole number of {datatype} values")
            tensor["data"] = list(struct.unpack(f"<{size // width}{code}", raw))
        else:
            raise ValueError(f"unknown datatype {datatype!r}")
    if offset != len(body):
        raise ValueError("the binary outputs do not add up to the body")


def _bytes_items(raw: bytes) -> list[str]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("a truncated BYTES length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    if offset != len(raw):
        raise ValueError("a BYTES item runs past its tensor")
    return items


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


def compare_answers(
    *,
    live: bytes,
    shadow: bytes,
    tolerance: float,
    live_json_length: int | None = None,
    shadow_json_length: int | None = None,
) -> Comparison:
    """agree: same class for every row and every probability within `tolerance`; disagree
    otherwise; error when either answer cannot be read. An answer in the binary tensor
    extension is read with its JSON header's length (`*_json_length`, from its header).

    When one side has no labels (a v2 request that asked for predict_proba only), the classes
    compared are the most probable ones of each row.
    """
    try:
        mine = parse_answer(live, live_json_length)
        theirs = parse_answer(shadow, shadow_json_length)
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


def table_from_plan(
    plan: RoutingPlan, *, name: str, upstreams: Mapping[str, str] | None = None
) -> RoutingTable:
    """The routing table of a routing plan (`canaryml_api.routing`). Upstreams are the
    operator's Services NAME-TRACK unless `upstreams` overrides a track; a track the plan does
    not have gets none."""
    overrides = upstreams or {}
    return RoutingTable(
        upstreams={t: overrides.get(t) or service_url(name, t) for t in plan.tracks},
        canary_weight=plan.canary_weight,
        shadow_percent=plan.shadow_percent,
        sticky_header=plan.sticky_header,
        versions={track: version for track, version in plan.versions.items()},
        probability_tolerance=plan.probability_tolerance,
        canary_serving=plan.canary_serving,
        segments=tuple(SegmentRule.of(match) for match in plan.canary_match),
        rate_limit=(
            RateLimit.of(limit.requests_per_second, limit.burst, limit.client_header)
            if (limit := plan.rate_limit) is not None
            else None
        ),
        canary_mirror=plan.canary_mirror,
    )


def table_from_model_deployment(
    obj: Mapping[str, Any], *, upstreams: Mapping[str, str] | None = None
) -> RoutingTable:
    """The routing table a ModelDeployment object (as the API returns it) stands for: its spec
    and status read with the API's own models, its weights from the one routing plan.

    Raises ValueError when the object cannot be read (the follower then keeps its last table).
    """
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError("the object has no metadata.name")
    spec = resource.parse_spec(obj.get("spec"))
    status = resource.parse_status(obj.get("status"))
    return table_from_plan(plan_routing(spec, status), name=name, upstreams=upstreams)
