"""The Grafana dashboard the Helm chart ships: plain JSON that reads only metrics that exist.

Every metric name in every panel query must be one that the model server, the router or the
operator exports (the server's and router's names are imported from their code, so a rename
there fails here), and every selector is scoped to the chosen namespace and ModelDeployments.
Each check is a function returning problems, and `test_each_check_catches_its_mistake` breaks a
copy of the dashboard to show that each one can fail.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from canaryml_api.telemetry import (
    BIN_LABEL,
    FEATURE_DRIFT_P_VALUE,
    FEEDBACK_ABSOLUTE_ERROR_TOTAL,
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_DELAY,
    FEEDBACK_LABELS_TOTAL,
    FEEDBACK_REJECTED_TOTAL,
    FEEDBACK_SQUARED_ERROR_TOTAL,
    LATENCY_BUCKETS,
    LE_LABEL,
    PREDICTION_DRIFT_P_VALUE,
    PREDICTIONS_TOTAL,
    SHADOW_COMPARISONS,
    bucket_label,
)
from canaryml_api.telemetry import ROUTER_CANARY_WEIGHT as CANARY_WEIGHT
from canaryml_api.telemetry import ROUTER_SHADOW_PERCENT as SHADOW_PERCENT
from canaryml_api.telemetry import SOURCE_ROUTER as ROUTER_SOURCE
from canaryml_server.metrics import (
    DRIFT_WINDOW_ROWS,
    FEATURE_DRIFT,
    MODEL_INFO,
    PREDICTION_DRIFT,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
)

DASHBOARD_PATH = Path(__file__).parents[2] / "charts" / "canaryml" / "dashboards" / "canaryml.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The operator's own metrics (canaryml_operator.metrics), all labelled namespace, model_deployment.
OPERATOR_CANARY_WEIGHT = "canaryml_operator_canary_weight"
OPERATOR_PHASE = "canaryml_operator_phase"
OPERATOR_ANALYSES = "canaryml_operator_analyses_total"
OPERATOR_ROLLOUTS = "canaryml_operator_rollouts_total"
OPERATOR_STALLED = "canaryml_operator_stalled"
OPERATOR_HELD_ANALYSES = "canaryml_operator_held_analyses"
OPERATOR_METRICS = frozenset(
    {
        OPERATOR_CANARY_WEIGHT,
        OPERATOR_PHASE,
        OPERATOR_ANALYSES,
        OPERATOR_ROLLOUTS,
        OPERATOR_STALLED,
        OPERATOR_HELD_ANALYSES,
    }
)
# A histogram has no series of its own name in Prometheus: only these.
HISTOGRAM_SERIES = frozenset(
    f"{REQUEST_DURATION}{suffix}" for suffix in ("_bucket", "_sum", "_count")
)
REQUEST_METRICS = frozenset({REQUESTS_TOTAL, *HISTOGRAM_SERIES})  # router and servers: pick one
# The servers' feedback, under the track and version of the prediction each label is for.
FEEDBACK_DELAY_BUCKET = f"{FEEDBACK_DELAY}_bucket"
FEEDBACK_METRICS = frozenset(
    {
        FEEDBACK_LABELS_TOTAL,
        FEEDBACK_CORRECT_TOTAL,
        FEEDBACK_ABSOLUTE_ERROR_TOTAL,
        FEEDBACK_SQUARED_ERROR_TOTAL,
        *(f"{FEEDBACK_DELAY}{suffix}" for suffix in ("_bucket", "_sum", "_count")),
    }
)
# Refused feedback is counted under the refusing server's own track, not a track the refused
# item names (its prediction id is not to be trusted): never shown by track.
NOT_BY_TRACK_METRICS = frozenset({FEEDBACK_REJECTED_TOTAL})
PER_TRACK_METRICS = frozenset(
    {
        *REQUEST_METRICS,
        FEATURE_DRIFT,
        PREDICTION_DRIFT,
        FEATURE_DRIFT_P_VALUE,
        PREDICTION_DRIFT_P_VALUE,
        PREDICTIONS_TOTAL,
        SHADOW_COMPARISONS,
        DRIFT_WINDOW_ROWS,
        *FEEDBACK_METRICS,
    }
)
KNOWN_METRICS = frozenset(
    {
        *PER_TRACK_METRICS,
        MODEL_INFO,
        CANARY_WEIGHT,
        SHADOW_PERCENT,
        *OPERATOR_METRICS,
        *NOT_BY_TRACK_METRICS,
    }
)
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__range", "__interval"})
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*(\{.*\})?\s*,\s*\w+\s*\)")
SCOPE = (("namespace", "=", "$namespace"), ("model_deployment", "=~", "$model_deployment"))
# The `le` values of the latency histogram's buckets, as the exporters write them.
BUCKET_LABELS = tuple(bucket_label(bound) for bound in (*LATENCY_BUCKETS, float("inf")))
SLOW_BOUND = "slow_bound"  # the custom variable: which bucket splits slow from fast requests
SLOW_BOUND_DEFAULT = "0.25"  # the bucket of maxLatencyP99 200ms and 250ms

# --- a PromQL reader, just enough to find metric names, their matchers and groupings ----------

_TOKEN = re.compile(
    r"""\s+
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<variable>\$\{\w+(?::\w+)?\}|\$\w+)
    |(?P<number>\d[\w.]*)
    |(?P<name>[A-Za-z_:][\w:]*)
    |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)
_AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
_GROUPINGS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    by: list[tuple[str, ...]] = field(default_factory=list)  # each `by (...)` clause
    functions: set[str] = field(default_factory=set)
    # For each `by` clause, in the same order: the labels that a many-to-one match before it,
    # `ignoring(...) group_left`, takes from its left side (the clause is on the "one" side).
    # `on(...) group_left` and `group_right` carry none here: the check is stricter for them.
    carried: list[tuple[str, ...]] = field(default_factory=list)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r} in {expr!r}")
        if match.lastgroup is not None:
            tokens.append((match.lastgroup, match.group()))
        position = match.end()
    return tokens


def _closing(tokens: list[tuple[str, str]], start: int, opening: str, closing: str) -> int:
    """The index of the token that closes the bracket opened at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index] == ("op", opening):
            depth += 1
        elif tokens[index] == ("op", closing):
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced {opening!r} in {' '.join(text for _, text in tokens)}")


def _matchers(tokens: list[tuple[str, str]]) -> tuple[tuple[str, str, str], ...]:
    """`label op "value"` triples of the tokens inside one `{...}`."""
    matchers = []
    for index in range(0, len(tokens), 4):
        label, op, value = tokens[index : index + 3]
        separator = tokens[index + 3 : index + 4]
        if (
            label[0] != "name"
            or op[1] not in ("=", "!=", "=~", "!~")
            or value[0] != "string"
            or separator not in ([], [("op", ",")])
        ):
            raise ValueError(f"not a label matcher: {tokens[index : index + 4]}")
        matchers.append((label[1], op[1], json.loads(value[1])))
    return tuple(matchers)


def parse(expr: str) -> Parsed:
    tokens = _tokens(expr)
    parsed = Parsed()
    ignored: tuple[str, ...] = ()  # the last `ignoring (...)` clause
    carried: tuple[str, ...] = ()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if (kind, text) == ("op", "["):  # a range or subquery: durations and variables only
            index = _closing(tokens, index, "[", "]") + 1
        elif (kind, text) == ("op", "{"):
            raise ValueError(f"a selector without a metric name in {expr!r}")
        elif kind == "name" and text.lower() in _GROUPINGS:
            index += 1
            labels: tuple[str, ...] = ()
            if tokens[index : index + 1] == [("op", "(")]:
                end = _closing(tokens, index, "(", ")")
                labels = tuple(t for k, t in tokens[index + 1 : end] if k == "name")
                index = end + 1
            if text.lower() == "by":
                parsed.by.append(labels)
                parsed.carried.append(carried)
            elif text.lower() in ("on", "ignoring"):
                ignored = labels if text.lower() == "ignoring" else ()
            elif text.lower() == "group_left":
                carried = ignored
        elif kind == "name" and (text.lower() in _KEYWORDS or text in _AGGREGATIONS):
            index += 1
        elif kind == "name" and following == ("op", "("):
            parsed.functions.add(text)
            index += 1
        elif kind == "name":
            matchers: tuple[tuple[str, str, str], ...] = ()
            index += 1
            if following == ("op", "{"):
                end = _closing(tokens, index, "{", "}")
                matchers = _matchers(tokens[index + 1 : end])
                index = end + 1
            parsed.selectors.append(Selector(text, matchers))
        else:
            index += 1
    return parsed


# --- the dashboard -------------------------------------------------------------------------


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def strings(value: Any) -> Iterator[str]:
    """Every string anywhere in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def where(panel: dict[str, Any], target: dict[str, Any] | None = None) -> str:
    ref = f" {target.get('refId')}" if target is not None else ""
    return f"panel {panel.get('id')} {panel.get('title')!r}{ref}"


# --- the checks: each returns what is wrong ------------------------------------------------


def id_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    ids = [panel.get("id") for panel in panels(dashboard)]
    if not all(isinstance(i, int) and i > 0 for i in ids):
        problems.append(f"panel ids must be positive integers: {ids}")
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {sorted({str(i) for i in ids if ids.count(i) > 1})}")
    for panel in panels(dashboard):
        refs = [target.get("refId") for target in panel.get("targets", [])]
        if None in refs or len(refs) != len(set(refs)):
            problems.append(f"{where(panel)}: refIds must be set and unique: {refs}")
    uids = [dashboard.get("uid"), *(p["uid"] for p in panels(dashboard) if "uid" in p)]
    if len(uids) != len(set(uids)):
        problems.append(f"uids repeat: {uids}")
    return problems


def datasource_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    for panel in panels(dashboard):
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{where(panel)}: datasource {panel.get('datasource')}")
        if not panel.get("targets"):
            problems.append(f"{where(panel)}: no targets")
        for target in panel.get("targets", []):
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{where(panel, target)}: datasource {target['datasource']}")
            if not str(target.get("expr", "")).strip():
                problems.append(f"{where(panel, target)}: no expr")
    for variable in variables(dashboard).values():
        if variable.get("type") == "query" and variable.get("datasource") != DATASOURCE:
            problems.append(f"variable {variable['name']}: datasource {variable.get('datasource')}")
    return problems


def metric_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    for panel, target in targets(dashboard):
        try:
            parsed = parse(target["expr"])
        except ValueError as error:
            problems.append(f"{where(panel, target)}: {error}")
            continue
        if not parsed.selectors:
            problems.append(f"{where(panel, target)}: reads no metric")
        for selector in parsed.selectors:
            if selector.metric not in KNOWN_METRICS:
                problems.append(f"{where(panel, target)}: unknown metric {selector.metric}")
    for name, query in variable_queries(dashboard).items():
        metric = re.fullmatch(LABEL_VALUES, query)
        if metric is None or metric.group(1) not in KNOWN_METRICS:
            problems.append(f"variable {name}: {query!r} is not label_values of a known metric")
    return problems


def scope_problems(dashboard: dict[str, Any]) -> list[str]:
    """Every selector reads only the chosen namespace and (multi-select: a regex) deployments."""
    problems = []
    for panel, target in targets(dashboard):
        for selector in parse(target["expr"]).selectors:
            missing = [m for m in SCOPE if m not in selector.matchers]
            if missing:
                problems.append(f"{where(panel, target)}: {selector} lacks {missing}")
    return problems


def source_problems(dashboard: dict[str, Any]) -> list[str]:
    """Router and servers both export the request metrics: every query reads the router's."""
    problems = []
    for panel, target in targets(dashboard):
        for selector in parse(target["expr"]).selectors:
            if (
                selector.metric in REQUEST_METRICS
                and ("source", "=", ROUTER_SOURCE) not in selector.matchers
            ):
                problems.append(f"{where(panel, target)}: {selector.metric} not source=router")
    return problems


def legend_problems(dashboard: dict[str, Any]) -> list[str]:
    """A legend's labels survive every aggregation (or, on the "one" side of `ignoring(...)
    group_left`, come from the other side); per-track metrics are shown per track, and those
    whose track is not the one they are about never are."""
    problems = []
    for panel, target in targets(dashboard):
        parsed = parse(target["expr"])
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        for labels, carried in zip(parsed.by, parsed.carried, strict=True):
            if not legend <= {*labels, *carried}:
                problems.append(f"{where(panel, target)}: legend {legend} but by {labels}")
        if any(s.metric in PER_TRACK_METRICS for s in parsed.selectors):
            if "track" not in legend:
                problems.append(f"{where(panel, target)}: a per-track metric without {{{{track}}}}")
            if not parsed.by or not all("track" in labels for labels in parsed.by):
                problems.append(f"{where(panel, target)}: not aggregated by track")
        shows_track = "track" in legend or not parsed.by or any("track" in by for by in parsed.by)
        if shows_track and any(s.metric in NOT_BY_TRACK_METRICS for s in parsed.selectors):
            problems.append(f"{where(panel, target)}: shown by the exporter's own track")
    return problems


def bucket_problems(dashboard: dict[str, Any]) -> list[str]:
    """A histogram bucket is read by one `le` that exists: a bucket bound as the exporters
    write it, or the slow_bound variable, whose every option is one (a wrong `le` reads nothing,
    and its panel is silently empty)."""
    problems = []
    bucket_series = f"{REQUEST_DURATION}_bucket"
    for panel, target in targets(dashboard):
        for selector in parse(target["expr"]).selectors:
            if selector.metric != bucket_series:
                continue
            le = [(op, value) for label, op, value in selector.matchers if label == LE_LABEL]
            if le and le not in ([("=", value)] for value in (*BUCKET_LABELS, f"${SLOW_BOUND}")):
                problems.append(f"{where(panel, target)}: {LE_LABEL} {le} is no bucket")
    variable = variables(dashboard).get(SLOW_BOUND)
    if variable is None:
        return problems
    values = [option.get("value") for option in variable.get("options", [])]
    listed = [value.strip() for value in str(variable.get("query", "")).split(",")]
    if variable.get("type") != "custom" or variable.get("multi") or variable.get("includeAll"):
        problems.append(f"variable {SLOW_BOUND}: not one value of a custom list")
    if listed != values or not set(values) <= set(BUCKET_LABELS):
        problems.append(f"variable {SLOW_BOUND}: {listed}, {values} are not bucket bounds")
    if variable.get("current", {}).get("value") not in values:
        problems.append(
            f"variable {SLOW_BOUND}: the default {variable.get('current')} is no option"
        )
    return problems


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    queries = {}
    for name, variable in variables(dashboard).items():
        if variable.get("type") == "query":
            query = variable.get("query")
            queries[name] = query.get("query", "") if isinstance(query, dict) else str(query)
    return queries


def referenced_variables(dashboard: dict[str, Any]) -> set[str]:
    found = set()
    for text in strings(dashboard):
        for braced, plain, old in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", text):
            found.add(braced or plain or old)
    return found


def variable_problems(dashboard: dict[str, Any]) -> list[str]:
    defined = set(variables(dashboard))
    problems = [
        f"${name} is used but not defined"
        for name in sorted(referenced_variables(dashboard) - defined - GRAFANA_BUILTINS)
    ]
    # Chained variables resolve in order: each may only use those defined before it.
    seen: set[str] = set()
    for name, variable in variables(dashboard).items():
        uses = referenced_variables(variable) - GRAFANA_BUILTINS - {name}
        if not uses <= seen:
            problems.append(f"variable {name} uses {sorted(uses - seen)} before they are defined")
        seen.add(name)
    return problems


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "ids": id_problems,
    "datasource": datasource_problems,
    "metrics": metric_problems,
    "scope": scope_problems,
    "source": source_problems,
    "legends": legend_problems,
    "variables": variable_problems,
    "buckets": bucket_problems,
}


# --- tests ---------------------------------------------------------------------------------


def test_the_dashboard_is_plain_json_with_its_identity() -> None:
    dashboard = load()
    assert dashboard["uid"] == "canaryml-rollouts"
    assert len(dashboard["uid"]) <= 40  # Grafana's limit
    assert dashboard["title"] == "canaryml rollouts"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["tags"] == ["canaryml"]
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert dashboard.get("id") is None  # Grafana assigns it; a fixed id clashes on import
    assert "__inputs" not in dashboard  # provisioned as is: no import-time ${DS_...} inputs


def test_double_braces_are_only_grafana_legends() -> None:
    """The chart reads the file with .Files.Get: no Helm templating, and `{{label}}` only where
    Grafana expands it (so the chart must not pass this file through `tpl`)."""
    dashboard = load()
    legends = {target.get("legendFormat") for _, target in targets(dashboard)}
    for text in strings(dashboard):
        if "{{" in text or "}}" in text:
            assert text in legends, text
            assert re.fullmatch(r"([^{}]|\{\{\w+\}\})*", text), text


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_dashboard_passes(check: str) -> None:
    assert CHECKS[check](load()) == []


def test_the_panels() -> None:
    dashboard = load()
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    assert set(by_title) == {
        "Rollout phase",
        "Analyses by verdict",
        "Promotions and rollbacks",
        "Canary weight",
        "Request rate by track",
        "Error rate by track",
        "Latency p99 and p50 by track",
        "Worst feature drift (PSI) by track",
        "Prediction drift (PSI) by track",
        "Shadow agreement",
        "Stalled rollouts and held analyses",
        P_VALUES,
        SLOW_REQUESTS,
        CLASS_SHARE,
        ACCURACY,
        MEAN_ABSOLUTE_ERROR,
        LABEL_DELAY,
        FEEDBACK_REFUSED,
    }

    def metrics_of(expr: str) -> set[str]:
        return {s.metric for s in parse(expr).selectors}

    def metrics(title: str) -> set[str]:
        return {m for t in by_title[title]["targets"] for m in metrics_of(t["expr"])}

    def unit(title: str) -> Any:
        return by_title[title]["fieldConfig"]["defaults"].get("unit")

    assert metrics("Canary weight") == {CANARY_WEIGHT, OPERATOR_CANARY_WEIGHT}
    assert metrics("Request rate by track") == {REQUESTS_TOTAL}
    assert metrics("Error rate by track") == {REQUESTS_TOTAL}
    assert 'code=~"5.."' in by_title["Error rate by track"]["targets"][0]["expr"]
    assert unit("Error rate by track") == "percentunit"
    latency = by_title["Latency p99 and p50 by track"]
    quantiles = sorted(
        t["expr"].removeprefix("histogram_quantile(").split(",")[0] for t in latency["targets"]
    )
    assert quantiles == ["0.5", "0.99"]
    assert metrics("Latency p99 and p50 by track") == {f"{REQUEST_DURATION}_bucket"}
    assert all(("le" in by) for t in latency["targets"] for by in parse(t["expr"]).by)
    assert unit("Latency p99 and p50 by track") == "s"
    drift = by_title["Worst feature drift (PSI) by track"]
    assert metrics(drift["title"]) == {FEATURE_DRIFT}
    assert drift["targets"][0]["expr"].startswith("max by (")
    defaults = drift["fieldConfig"]["defaults"]
    assert 0.25 in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed")
    assert metrics("Prediction drift (PSI) by track") == {PREDICTION_DRIFT}
    assert metrics("Shadow agreement") == {SHADOW_COMPARISONS}
    assert unit("Shadow agreement") == "percentunit"
    assert by_title["Rollout phase"]["type"] in ("stat", "state-timeline")
    assert by_title["Rollout phase"]["targets"][0]["expr"].endswith("== 1")
    assert metrics("Rollout phase") == {OPERATOR_PHASE}
    assert metrics("Analyses by verdict") == {OPERATOR_ANALYSES}
    assert metrics("Promotions and rollbacks") == {OPERATOR_ROLLOUTS}
    assert metrics("Stalled rollouts and held analyses") == {
        OPERATOR_STALLED,
        OPERATOR_HELD_ANALYSES,
    }

    # The opt-in checks' view: the calibrated drift test, slow requests, predicted classes.
    p_values = by_title[P_VALUES]
    assert [metrics_of(t["expr"]) for t in p_values["targets"]] == [
        {FEATURE_DRIFT_P_VALUE},
        {PREDICTION_DRIFT_P_VALUE},
    ]
    for target in p_values["targets"]:  # the smallest over features and replicas, per track
        assert "min by (model_deployment, track, version) (" in target["expr"]
    defaults = p_values["fieldConfig"]["defaults"]
    assert defaults["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert 0.01 in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert "driftSignificance" in p_values["description"]

    slow = by_title[SLOW_REQUESTS]
    assert metrics(SLOW_REQUESTS) == {f"{REQUEST_DURATION}_bucket"}
    [expr] = [t["expr"] for t in slow["targets"]]
    assert expr.startswith("1 - sum by (")
    numerator, denominator = expr.split(" / ")
    assert f'{LE_LABEL}="${SLOW_BOUND}"' in numerator and "+Inf" not in numerator
    assert f'{LE_LABEL}="+Inf"' in denominator and SLOW_BOUND not in denominator
    assert unit(SLOW_REQUESTS) == "percentunit"
    assert 0.01 in [s["value"] for s in slow["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert "1 %" in slow["description"] and "slowRequests" in slow["description"]

    share = by_title[CLASS_SHARE]
    assert metrics(CLASS_SHARE) == {PREDICTIONS_TOTAL}
    [target] = share["targets"]
    parsed = parse(target["expr"])
    assert parsed.by == [("model_deployment", "track", BIN_LABEL), ("model_deployment", "track")]
    assert f"ignoring({BIN_LABEL}) group_left" in target["expr"]
    assert f"{{{{{BIN_LABEL}}}}}" in target["legendFormat"]
    assert unit(CLASS_SHARE) == "percentunit"
    assert "predictionsVsStable" in share["description"]

    # Feedback: each a ratio of the servers' counters per track and version, the labelled
    # predictions' count below (accuracy for classifiers, mean absolute error for regressors).
    per_track = ("model_deployment", "track", "version")
    for title, numerator in [
        (ACCURACY, FEEDBACK_CORRECT_TOTAL),
        (MEAN_ABSOLUTE_ERROR, FEEDBACK_ABSOLUTE_ERROR_TOTAL),
    ]:
        [target] = by_title[title]["targets"]
        parsed = parse(target["expr"])
        assert [s.metric for s in parsed.selectors] == [numerator, FEEDBACK_LABELS_TOTAL], title
        assert parsed.by == [per_track, per_track], title
        assert parsed.functions == {"rate"}, title
    assert unit(ACCURACY) == "percentunit"
    assert "minAccuracy" in by_title[ACCURACY]["description"]
    assert "maxAccuracyDrop" in by_title[ACCURACY]["description"]
    delay = by_title[LABEL_DELAY]
    assert sorted(
        t["expr"].removeprefix("histogram_quantile(").split(",")[0] for t in delay["targets"]
    ) == ["0.5", "0.95"]
    assert metrics(LABEL_DELAY) == {FEEDBACK_DELAY_BUCKET}
    assert all(by == ("le", *per_track) for t in delay["targets"] for by in parse(t["expr"]).by)
    assert unit(LABEL_DELAY) == "s"
    [refused] = by_title[FEEDBACK_REFUSED]["targets"]
    assert metrics(FEEDBACK_REFUSED) == {FEEDBACK_REJECTED_TOTAL}
    assert parse(refused["expr"]).by == [("model_deployment", "reason")]
    assert "{{reason}}" in refused["legendFormat"]
    assert "CanarymlFeedbackRefused" in by_title[FEEDBACK_REFUSED]["description"]


def test_the_variables() -> None:
    defined = variables(load())
    assert list(defined) == ["datasource", "namespace", "model_deployment", SLOW_BOUND]
    assert defined["datasource"]["type"] == "datasource"
    assert defined["datasource"]["query"] == "prometheus"
    queries = variable_queries(load())
    assert queries == {
        "namespace": f"label_values({REQUESTS_TOTAL}, namespace)",
        "model_deployment": (
            f'label_values({REQUESTS_TOTAL}{{namespace="$namespace"}}, model_deployment)'
        ),
    }
    assert defined["model_deployment"]["multi"] is True
    assert defined["model_deployment"]["includeAll"] is True
    # The finite bucket bounds, as Prometheus has them; +Inf would count every request slow-free.
    slow_bound = defined[SLOW_BOUND]
    assert slow_bound["type"] == "custom"
    assert slow_bound["query"] == ",".join(bucket_label(bound) for bound in LATENCY_BUCKETS)
    assert [option["value"] for option in slow_bound["options"]] == list(BUCKET_LABELS[:-1])
    assert slow_bound["current"]["value"] == SLOW_BOUND_DEFAULT
    assert [o["value"] for o in slow_bound["options"] if o["selected"]] == [SLOW_BOUND_DEFAULT]


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(load()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# --- the checks can fail -------------------------------------------------------------------


def test_the_reader_finds_metrics_matchers_and_groupings() -> None:
    parsed = parse(
        "histogram_quantile(0.99, sum by (le, track) "
        '(rate(a_bucket{x="1", y=~"a|b"}[$__rate_interval])))'
        ' / on() group_left(z) (b or on() vector(0)) + max(c{w!="q\\"r"} offset 5m) by (v)'
    )
    assert parsed.selectors == [
        Selector("a_bucket", (("x", "=", "1"), ("y", "=~", "a|b"))),
        Selector("b", ()),
        Selector("c", (("w", "!=", 'q"r'),)),
    ]
    assert parsed.by == [("le", "track"), ("v",)]
    assert parsed.carried == [(), ()]  # on() group_left carries nothing the check relies on
    assert parsed.functions == {"histogram_quantile", "rate", "vector"}
    share = parse("sum by (t, bin) (a) / ignoring(bin) group_left sum by (t) (a) + max by (t) (b)")
    assert share.by == [("t", "bin"), ("t",), ("t",)]
    assert share.carried == [(), ("bin",), ("bin",)]


@pytest.mark.parametrize("expr", ['{__name__="x"}', "sum(x{a=1})", "rate(x[5m)", "x{a=~}"])
def test_the_reader_refuses_what_it_cannot_check(expr: str) -> None:
    with pytest.raises(ValueError):
        parse(expr)


def _replace(old: str, new: str, title: str | None = None) -> Callable[[dict[str, Any]], None]:
    def mutate(dashboard: dict[str, Any]) -> None:
        changed = 0
        for panel, target in targets(dashboard):
            if (title is None or panel["title"] == title) and old in target["expr"]:
                target["expr"] = target["expr"].replace(old, new, 1)
                changed += 1
                break
        assert changed, f"{old!r} is in no expression: the mutation tests nothing"

    return mutate


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(dashboard: dict[str, Any]) -> None:
        node: Any = dashboard
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


REQUEST_RATE = "Request rate by track"
P_VALUES = "Drift p-value by track (calibrated test, log scale)"
SLOW_REQUESTS = "Slow requests by track"
CLASS_SHARE = "Predicted class share by track"
ACCURACY = "Accuracy on labelled predictions by track"
MEAN_ABSOLUTE_ERROR = "Mean absolute error by track"
LABEL_DELAY = "Label delay p50/p95 by track"
FEEDBACK_REFUSED = "Feedback refused by reason"
SCOPED_DEPLOYMENTS = 'model_deployment=~"$model_deployment"'
MISTAKES: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("misspelt metric", "metrics", _replace(FEATURE_DRIFT, "canaryml_feature_drfit")),
    (
        "misspelt predictions counter",
        "metrics",
        _replace(PREDICTIONS_TOTAL, "canaryml_prediction_total", CLASS_SHARE),
    ),
    (
        "p-value without namespace",
        "scope",
        _replace('namespace="$namespace", ', "", P_VALUES),
    ),
    ("slow requests of both views", "source", _replace(', source="router"', "", SLOW_REQUESTS)),
    ("bare histogram", "metrics", _replace(f"{REQUEST_DURATION}_bucket", REQUEST_DURATION)),
    (
        "unknown variable metric",
        "metrics",
        _set(("templating", "list", 1, "query", "query"), "label_values(up, namespace)"),
    ),
    ("no namespace", "scope", _replace('namespace="$namespace", ', "")),
    (
        "one deployment only",
        "scope",
        _replace(SCOPED_DEPLOYMENTS, SCOPED_DEPLOYMENTS.replace("=~", "=")),
    ),
    ("both request views", "source", _replace(', source="router"', "", REQUEST_RATE)),
    ("server view", "source", _replace('"router"', '"server"', "Error rate by track")),
    ("fixed datasource", "datasource", _set(("panels", 0, "datasource"), {"uid": "prom"})),
    ("no targets", "datasource", _set(("panels", 1, "targets"), [])),
    ("repeated id", "ids", _set(("panels", 1, "id"), 1)),
    ("repeated refId", "ids", _set(("panels", 3, "targets", 1, "refId"), "A")),
    ("undefined variable", "variables", _replace('"$namespace"', '"$cluster"')),
    (
        "legend label lost",
        "legends",
        _replace("by (model_deployment, track, version)", "by (model_deployment)", REQUEST_RATE),
    ),
    (
        "summed over tracks",
        "legends",
        _set(("panels", 4, "targets", 0, "legendFormat"), "{{model_deployment}}"),
    ),
    (
        "class summed over",
        "legends",
        _replace(f"track, {BIN_LABEL})", "track)", CLASS_SHARE),
    ),
    (
        "no many-to-one match",
        "legends",
        _replace(f"ignoring({BIN_LABEL}) group_left ", "", CLASS_SHARE),
    ),
    (
        "p-value summed over tracks",
        "legends",
        _replace("by (model_deployment, track, version)", "by (model_deployment)", P_VALUES),
    ),
    ("no such bucket", "buckets", _replace('le="+Inf"', 'le="Inf"', SLOW_REQUESTS)),
    ("buckets summed", "buckets", _replace('le="$slow_bound"', 'le=~"$slow_bound"')),
    ("undefined bucket variable", "variables", _replace("$slow_bound", "$slow_bucket")),
    (
        "bound not a bucket",
        "buckets",
        _set(("templating", "list", 3, "options", 0, "value"), "0.2"),
    ),
    ("bound not listed", "buckets", _set(("templating", "list", 3, "query"), "0.25,0.5")),
    (
        "default no option",
        "buckets",
        _set(("templating", "list", 3, "current"), {"text": "0.2", "value": "0.2"}),
    ),
    ("several bounds", "buckets", _set(("templating", "list", 3, "multi"), True)),
    (
        "misspelt feedback counter",
        "metrics",
        _replace(FEEDBACK_CORRECT_TOTAL, "canaryml_feedback_corrects_total", ACCURACY),
    ),
    ("bare delay histogram", "metrics", _replace(FEEDBACK_DELAY_BUCKET, FEEDBACK_DELAY)),
    (
        "accuracy summed over tracks",
        "legends",
        _replace("by (model_deployment, track, version)", "by (model_deployment)", ACCURACY),
    ),
    (
        "refusals by the server's track",
        "legends",
        _replace("by (model_deployment, reason)", "by (model_deployment, track, reason)"),
    ),
    (
        "refusals of every namespace",
        "scope",
        _replace('namespace="$namespace", ', "", FEEDBACK_REFUSED),
    ),
]


@pytest.mark.parametrize(
    ("check", "mutate"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_check_catches_its_mistake(
    check: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    dashboard = copy.deepcopy(load())
    mutate(dashboard)
    assert CHECKS[check](dashboard) != []


def test_the_operator_metric_names_are_those_the_operator_exports() -> None:
    from canaryml_operator import metrics

    exported = set()
    for metric in (
        metrics.CANARY_WEIGHT,
        metrics.PHASE,
        metrics.STALLED,
        metrics.HELD_ANALYSES,
        metrics.ANALYSES,
        metrics.ROLLOUTS,
    ):
        for family in metric.describe():
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert exported == OPERATOR_METRICS


@pytest.mark.parametrize("regression", [False, True], ids=["classifier", "regressor"])
def test_the_feedback_metric_names_are_those_the_servers_export(regression: bool) -> None:
    from canaryml_server.metrics import FeedbackMetrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    labels = {"model_deployment": "iris", "track": "stable", "version": "1"}
    FeedbackMetrics(registry=registry, labels=labels, regression=regression)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    read = {*FEEDBACK_METRICS, *NOT_BY_TRACK_METRICS}
    # A regressor has no correct predictions, a classifier no errors to sum.
    kind_of_other = (
        {FEEDBACK_CORRECT_TOTAL}
        if regression
        else {FEEDBACK_ABSOLUTE_ERROR_TOTAL, FEEDBACK_SQUARED_ERROR_TOTAL}
    )
    assert read & exported == read - kind_of_other
