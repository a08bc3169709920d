"""Reusable analysis (pure): AnalysisTemplate and ClusterAnalysisTemplate validated, their args
substituted, their metrics merged with the resource's own, and the CRDs generated for them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_api import resource as api
from canaryml_operator import crd, templates, templating
from canaryml_operator.checks import build_queries
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.verdicts import judge

from tests.unit.specs import MINIMAL
from tests.unit.test_crd import json_schema, walk

ROOT = Path(__file__).resolve().parents[2]
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}

LATENCY_TEMPLATE: dict[str, Any] = {
    "args": [{"name": "service"}, {"name": "quantile", "value": "0.99"}],
    "metrics": [
        {
            "name": "upstream-latency",
            "query": 'histogram_quantile({{args.quantile}}, rate(upstream_seconds_bucket{service="'
            '{{ args.service }}"}[1m]))',
            "max": 0.5,
        }
    ],
}
KPI_TEMPLATE: dict[str, Any] = {
    "metrics": [{"name": "orders", "query": "sum(rate(orders_total[1m]))", "min": 1}]
}


def spec_with(*refs: dict[str, Any], metrics: list[dict[str, Any]] | None = None) -> Any:
    raw = copy.deepcopy(MINIMAL)
    raw["canary"] = {"model": CANARY}
    raw["analysis"] = {"templates": list(refs), "metrics": metrics or []}
    return api.parse_spec(raw)


def found(**templates: dict[str, Any] | None) -> dict[templating.TemplateKey, Any]:
    """`kind__name=spec` -> what the shell read (None: not found)."""
    out: dict[templating.TemplateKey, Any] = {}
    for key, spec in templates.items():
        kind, name = key.split("__")
        out[(kind, name.replace("_", "-"))] = None if spec is None else {"spec": spec}
    return out


# --- substitution ------------------------------------------------------------------------------


def test_args_are_substituted_with_or_without_spaces_in_the_braces() -> None:
    query = 'up{job="{{args.job}}", ns="{{ args.ns }}"} > {{args.job}}'
    assert templating.substitute(query, {"job": "iris", "ns": "ml"}) == (
        'up{job="iris", ns="ml"} > iris'
    )


def test_a_query_without_placeholders_is_unchanged() -> None:
    assert templating.substitute("sum(up)", {}) == "sum(up)"


def test_substitution_is_one_pass_a_value_is_never_expanded_again() -> None:
    assert templating.substitute("{{args.a}}", {"a": "{{args.b}}", "b": "x"}) == "{{args.b}}"


def test_a_missing_arg_is_named() -> None:
    with pytest.raises(ValueError, match="no value for args job, ns"):
        templating.substitute("{{args.ns}}{{args.job}}{{args.x}}", {"x": "1"})


def test_the_substituted_query_is_bounded_like_an_inline_one() -> None:
    long = "x" * api.MAX_ARG_VALUE_LENGTH
    query = "{{args.a}}" * 4 + "y"  # 4 x 1024 + 1 characters once substituted
    with pytest.raises(ValueError, match=f"more than {templating.MAX_QUERY_LENGTH}"):
        templating.substitute(query, {"a": long})
    assert len(templating.substitute("{{args.a}}" * 4, {"a": long})) == 4096


def test_other_braces_are_left_alone() -> None:
    assert templating.substitute("{{ args }} {{other.x}} {args.a}", {"a": "1"}) == (
        "{{ args }} {{other.x}} {args.a}"
    )


# --- the template's own validation ---------------------------------------------------------------


def test_a_template_must_declare_the_args_its_queries_use() -> None:
    raw = {"metrics": [{"name": "m", "query": "up{job='{{args.job}}'}", "max": 1}]}
    with pytest.raises(ValueError, match="metric 'm' uses args not declared in args: job"):
        api.parse_template_spec(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metrics": []}, "spec.metrics"),
        ({"metrics": [{"name": "requests", "query": "q", "max": 1}]}, "built-in"),
        (
            {
                "metrics": [
                    {"name": "a", "query": "q", "max": 1},
                    {"name": "a", "query": "r", "max": 1},
                ]
            },
            "unique",
        ),
        ({"metrics": [{"name": "a", "query": "q"}]}, "set min, max or both"),
        (
            {
                "args": [{"name": "x"}, {"name": "x"}],
                "metrics": [{"name": "a", "query": "q", "max": 1}],
            },
            "repeated: x",
        ),
        ({"args": [{"name": "a-b"}], "metrics": [{"name": "a", "query": "q", "max": 1}]}, "args"),
    ],
)
def test_invalid_templates_are_refused_with_the_field_named(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        api.parse_template_spec(raw)


def test_references_are_bounded_and_unique() -> None:
    ref = {"name": "slo", "kind": "ClusterAnalysisTemplate"}
    with pytest.raises(ValueError, match="repeats ClusterAnalysisTemplate/slo"):
        spec_with(ref, ref)
    many = [{"name": f"t{i}"} for i in range(api.MAX_TEMPLATE_REFS + 1)]
    with pytest.raises(ValueError, match=r"analysis\.templates"):
        spec_with(*many)
    with pytest.raises(ValueError, match="kind"):
        spec_with({"name": "slo", "kind": "MetricTemplate"})
    # The same name in both kinds is two templates.
    both = spec_with({"name": "slo"}, ref)
    assert [r.kind for r in both.analysis.templates] == [
        "AnalysisTemplate",
        "ClusterAnalysisTemplate",
    ]


# --- resolution ---------------------------------------------------------------------------------


def test_no_templates_resolve_to_the_spec_itself() -> None:
    spec = spec_with()
    assert templating.resolve(spec, {}).spec is spec


def test_template_metrics_follow_the_inline_ones_with_args_substituted() -> None:
    spec = spec_with(
        {"name": "latency", "args": [{"name": "service", "value": "payments"}]},
        {"name": "kpi", "kind": "ClusterAnalysisTemplate"},
        metrics=[{"name": "own", "query": "sum(own)", "max": 3}],
    )
    resolution = templating.resolve(
        spec,
        found(
            AnalysisTemplate__latency=LATENCY_TEMPLATE, ClusterAnalysisTemplate__kpi=KPI_TEMPLATE
        ),
    )
    assert resolution.problem is None and resolution.spec is not None
    metrics = resolution.spec.analysis.metrics
    assert [m.name for m in metrics] == ["own", "upstream-latency", "orders"]
    assert metrics[1].query == (
        'histogram_quantile(0.99, rate(upstream_seconds_bucket{service="payments"}[1m]))'
    )
    assert (metrics[1].max, metrics[2].min) == (0.5, 1.0)
    # Nothing else of the spec changed; the spec given is left as it was.
    assert resolution.spec.model_dump(exclude={"analysis"}) == spec.model_dump(exclude={"analysis"})
    assert [m.name for m in spec.analysis.metrics] == ["own"]


def test_a_given_arg_overrides_the_templates_default() -> None:
    spec = spec_with(
        {
            "name": "latency",
            "args": [{"name": "service", "value": "a"}, {"name": "quantile", "value": "0.5"}],
        }
    )
    resolved = templating.resolve(spec, found(AnalysisTemplate__latency=LATENCY_TEMPLATE)).spec
    assert resolved is not None
    assert resolved.analysis.metrics[0].query.startswith("histogram_quantile(0.5,")


def test_a_missing_arg_is_an_invalid_spec_naming_the_template_and_metric() -> None:
    spec = spec_with({"name": "latency"})  # service has no default
    resolution = templating.resolve(spec, found(AnalysisTemplate__latency=LATENCY_TEMPLATE))
    assert resolution.spec is None and resolution.reason == templating.INVALID_SPEC
    assert resolution.problem == (
        "analysis.templates: AnalysisTemplate 'latency': metric 'upstream-latency': "
        "no value for args service"
    )


def test_an_arg_the_template_does_not_declare_is_an_invalid_spec() -> None:
    spec = spec_with({"name": "kpi", "args": [{"name": "job", "value": "x"}]})
    resolution = templating.resolve(spec, found(AnalysisTemplate__kpi=KPI_TEMPLATE))
    assert resolution.spec is None
    assert (
        "AnalysisTemplate 'kpi': args job are not declared by the template (it declares: none)"
        in str(resolution.problem)
    )


def test_a_name_clash_with_an_inline_metric_names_both() -> None:
    spec = spec_with({"name": "kpi"}, metrics=[{"name": "orders", "query": "q", "min": 2}])
    resolution = templating.resolve(spec, found(AnalysisTemplate__kpi=KPI_TEMPLATE))
    assert resolution.spec is None and resolution.reason == templating.INVALID_SPEC
    assert resolution.problem == (
        "analysis.templates: metric 'orders' is defined both by analysis.metrics and by "
        "AnalysisTemplate 'kpi'; rename one"
    )


def test_a_name_clash_between_two_templates_names_both() -> None:
    spec = spec_with({"name": "kpi"}, {"name": "kpi", "kind": "ClusterAnalysisTemplate"})
    resolution = templating.resolve(
        spec, found(AnalysisTemplate__kpi=KPI_TEMPLATE, ClusterAnalysisTemplate__kpi=KPI_TEMPLATE)
    )
    assert "metric 'orders' is defined both by AnalysisTemplate 'kpi' and by " in str(
        resolution.problem
    )
    assert "ClusterAnalysisTemplate 'kpi'" in str(resolution.problem)


def test_missing_templates_are_named_with_their_own_reason() -> None:
    spec = spec_with({"name": "kpi"}, {"name": "slo", "kind": "ClusterAnalysisTemplate"})
    resolution = templating.resolve(
        spec, found(AnalysisTemplate__kpi=KPI_TEMPLATE, ClusterAnalysisTemplate__slo=None)
    )
    assert resolution.spec is None and resolution.reason == templating.TEMPLATE_NOT_FOUND
    assert resolution.problem == (
        "analysis.templates: ClusterAnalysisTemplate 'slo' not found; the rollout holds until "
        "it exists or the reference is removed"
    )
    # Never read: the same as not found.
    assert templating.resolve(spec, {}).reason == templating.TEMPLATE_NOT_FOUND


def test_an_invalid_template_object_is_an_invalid_spec_naming_its_field() -> None:
    spec = spec_with({"name": "kpi"})
    broken = {"metrics": [{"name": "orders", "query": "q"}]}  # no bound: an older CRD let it in
    resolution = templating.resolve(spec, found(AnalysisTemplate__kpi=broken))
    assert resolution.spec is None and resolution.reason == templating.INVALID_SPEC
    assert "AnalysisTemplate 'kpi': spec.metrics.0: metric 'orders': set min, max or both" in str(
        resolution.problem
    )
    no_spec = templating.resolve(spec, {("AnalysisTemplate", "kpi"): {"metadata": {}}})
    assert "spec.metrics: Field required" in str(no_spec.problem)


def test_resolved_metrics_are_queried_and_judged_exactly_like_inline_ones() -> None:
    inline = spec_with(metrics=KPI_TEMPLATE["metrics"])
    templated = templating.resolve(
        spec_with({"name": "kpi"}), found(AnalysisTemplate__kpi=KPI_TEMPLATE)
    ).spec
    assert templated is not None
    assert templated.analysis.metrics == inline.analysis.metrics
    queries = build_queries(spec=templated, name="iris", namespace="ml", source="router")
    assert queries == build_queries(spec=inline, name="iris", namespace="ml", source="router")
    assert queries["orders"] == "sum(rate(orders_total[1m]))"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for value, verdict in ((0.5, "Failed"), (2.0, "Successful")):
        measured = Measurements(time=now, samples={"orders": Sample(value=value)})
        checks = {
            which: {r.name: r for r in judge(spec=s, measurements=measured)}["orders"]
            for which, s in (("inline", inline), ("templated", templated))
        }
        assert checks["inline"] == checks["templated"]
        assert checks["templated"].verdict == verdict


# --- the CRDs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "file"),
    [(False, crd.TEMPLATE_CRD_FILE), (True, crd.CLUSTER_TEMPLATE_CRD_FILE)],
)
def test_the_committed_template_crds_are_the_generated_ones(cluster: bool, file: str) -> None:
    generated = crd.render_template_crd(cluster=cluster)
    for folder in ("crds", "charts/canaryml/crds"):
        assert (ROOT / folder / file).read_text(encoding="utf-8") == generated, (
            f"{folder}/{file} is stale: run `canaryml crd --out {folder}`"
        )


def test_scopes_names_and_the_shared_spec() -> None:
    namespaced = crd.build_template_crd(cluster=False)
    cluster = crd.build_template_crd(cluster=True)
    assert namespaced["metadata"]["name"] == "analysistemplates.canaryml.dev"
    assert cluster["metadata"]["name"] == "clusteranalysistemplates.canaryml.dev"
    assert (namespaced["spec"]["scope"], cluster["spec"]["scope"]) == ("Namespaced", "Cluster")
    assert namespaced["spec"]["names"]["kind"] == api.TEMPLATE_KIND
    assert cluster["spec"]["names"]["kind"] == api.CLUSTER_TEMPLATE_KIND

    def schema(built: dict[str, Any]) -> Any:
        return built["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    assert schema(namespaced) == schema(cluster)
    assert set(crd.render_all()) == {
        crd.CRD_FILE,
        crd.TEMPLATE_CRD_FILE,
        crd.CLUSTER_TEMPLATE_CRD_FILE,
    }


def test_the_template_crds_are_structural_and_agree_with_the_models() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    root = yaml.safe_load(crd.render_template_crd(cluster=False))["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    for path, node in walk(root):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert node.get("type") not in (None, "null"), path
    validator = jsonschema.Draft202012Validator(json_schema(root))

    def admitted(spec: Any) -> bool:
        obj = {"apiVersion": api.API_VERSION, "kind": api.TEMPLATE_KIND, "metadata": {}}
        return not list(validator.iter_errors({**obj, "spec": spec}))

    assert admitted(LATENCY_TEMPLATE) and admitted(KPI_TEMPLATE)
    # CEL and cross-field rules are the models' (and the CEL rules of the CRD); the plain
    # schema refuses these alike.
    for bad in (
        {},
        {"metrics": []},
        {"metrics": [{"name": "Bad", "query": "q", "max": 1}]},
        {"metrics": [{"name": "m", "query": "q" * 4097, "max": 1}]},
        {"args": [{"name": "a", "value": "v" * 1025}], "metrics": KPI_TEMPLATE["metrics"]},
    ):
        assert not admitted(bad), bad
        with pytest.raises(ValueError):
            api.parse_template_spec(bad)


# --- the shell's pure parts ---------------------------------------------------------------------


def test_template_paths_by_scope() -> None:
    namespaced = api.AnalysisTemplateRef(name="kpi")
    cluster = api.AnalysisTemplateRef(name="slo", kind="ClusterAnalysisTemplate")
    assert templates.template_path(namespaced, "ml") == (
        "/apis/canaryml.dev/v1alpha1/namespaces/ml/analysistemplates/kpi"
    )
    assert templates.template_path(cluster, "ml") == (
        "/apis/canaryml.dev/v1alpha1/clusteranalysistemplates/slo"
    )


def test_held_by_templates_only_for_a_problem_of_templates() -> None:
    spec = spec_with({"name": "kpi"})
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def degraded(reason: str, message: str) -> api.ModelDeploymentStatus:
        return api.ModelDeploymentStatus(
            conditions=[
                api.Condition(
                    type="Degraded",
                    status="True",
                    reason=reason,
                    message=message,
                    last_transition_time=now,
                )
            ]
        )

    missing = templating.resolve(spec, {})
    clash = templating.resolve(
        spec_with({"name": "kpi"}, metrics=KPI_TEMPLATE["metrics"]),
        found(AnalysisTemplate__kpi=KPI_TEMPLATE),
    )
    assert templates.held_by_templates(spec, degraded(missing.reason, str(missing.problem)))
    assert templates.held_by_templates(spec, degraded(clash.reason, str(clash.problem)))
    assert not templates.held_by_templates(spec, degraded("UnpinnedModel", "no sha256"))
    assert not templates.held_by_templates(spec, api.ModelDeploymentStatus())
    assert not templates.held_by_templates(
        spec_with(), degraded(missing.reason, str(missing.problem))
    )
