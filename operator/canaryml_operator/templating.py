"""Reusable analysis: a ModelDeployment's analysis.templates resolved into custom metrics (pure).

The shell (`templates`) reads each referenced AnalysisTemplate or ClusterAnalysisTemplate with the
Kubernetes API, at each reconcile and analysis; `resolve` does the rest: it validates each
template, substitutes the args into its queries (`{{args.NAME}}`: the reference's value, else
the template's default), and merges the metrics with the resource's own `analysis.metrics`. The
result is a spec whose `analysis.metrics` holds them all, judged exactly like inline ones
(`checks`, `verdicts` know nothing of templates).

What cannot be resolved makes the spec invalid (nothing changes until it is fixed: the rollout
holds at its weight, the stable track untouched): a template that does not exist
(`TemplateNotFound`), an invalid template, an arg without a value, a query too long once
substituted, or a metric name given twice (`InvalidSpec`, naming both sources).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canaryml_api import resource as api

TEMPLATE_NOT_FOUND = "TemplateNotFound"
INVALID_SPEC = "InvalidSpec"
# The same bound as an inline query's (CustomMetric.query), after substitution.
MAX_QUERY_LENGTH: int = next(
    rule.max_length
    for rule in api.CustomMetric.model_fields["query"].metadata
    if getattr(rule, "max_length", None) is not None
)
# Inline metrics and templates' together: each list is bounded (20 metrics, 10 templates).
MAX_RESOLVED_METRICS = 100
# Every problem of resolution starts so (the shell tells them from other invalid specs by it).
PROBLEM_PREFIX = "analysis.templates: "

# (kind, name) of a referenced template -> its object as read (None: not found).
TemplateKey = tuple[str, str]


def key_of(ref: api.AnalysisTemplateRef) -> TemplateKey:
    return (ref.kind, ref.name)


def describe(ref: api.AnalysisTemplateRef) -> str:
    return f"{ref.kind} {ref.name!r}"


@dataclass(frozen=True)
class Resolution:
    """The spec with the templates' metrics merged in, or why it cannot be (`problem`, and the
    condition `reason` to show it with)."""

    spec: api.ModelDeploymentSpec | None
    problem: str | None = None
    reason: str = INVALID_SPEC


def substitute(query: str, args: Mapping[str, str], *, where: str = "the query") -> str:
    """`query` with each `{{args.NAME}}` replaced by `args[NAME]`, in one pass (a value that
    itself holds a placeholder is left as it is). A missing arg or a result longer than an
    inline query may be is a ValueError."""
    missing = sorted({name for name in api.ARG_PLACEHOLDER.findall(query) if name not in args})
    if missing:
        raise ValueError(f"{where}: no value for args {', '.join(missing)}")
    result = api.ARG_PLACEHOLDER.sub(lambda match: args[match.group(1)], query)
    if len(result) > MAX_QUERY_LENGTH:
        raise ValueError(
            f"{where}: {len(result)} characters once its args are substituted, "
            f"more than {MAX_QUERY_LENGTH}"
        )
    return result


def template_metrics(
    ref: api.AnalysisTemplateRef, template: api.AnalysisTemplateSpec
) -> list[api.CustomMetric]:
    """The template's metrics with the reference's args (else the template's defaults)
    substituted; a ValueError names what is missing."""
    declared = {arg.name for arg in template.args}
    unknown = sorted(arg.name for arg in ref.args if arg.name not in declared)
    if unknown:
        raise ValueError(
            f"args {', '.join(unknown)} are not declared by the template "
            f"(it declares: {', '.join(sorted(declared)) or 'none'})"
        )
    values = {arg.name: arg.value for arg in template.args if arg.value is not None}
    values.update({arg.name: arg.value for arg in ref.args})
    return [
        metric.model_copy(
            update={"query": substitute(metric.query, values, where=f"metric {metric.name!r}")}
        )
        for metric in template.metrics
    ]


def resolve(
    spec: api.ModelDeploymentSpec, found: Mapping[TemplateKey, Mapping[str, Any] | None]
) -> Resolution:
    """`spec` with the metrics of its analysis.templates (`found`: each one's object as read,
    None when it does not exist) after its own, in the order the templates are named."""
    refs = spec.analysis.templates
    if not refs:
        return Resolution(spec)
    missing = [describe(ref) for ref in refs if found.get(key_of(ref)) is None]
    if missing:
        return Resolution(
            None,
            f"{PROBLEM_PREFIX}{', '.join(missing)} not found; the rollout holds until "
            f"{'it exists' if len(missing) == 1 else 'they exist'} or the reference is removed",
            TEMPLATE_NOT_FOUND,
        )
    source = {metric.name: "analysis.metrics" for metric in spec.analysis.metrics}
    merged = list(spec.analysis.metrics)
    for ref in refs:
        body = found[key_of(ref)] or {}
        try:
            template = api.parse_template_spec(body.get("spec"))
            metrics = template_metrics(ref, template)
        except ValueError as error:
            return Resolution(None, f"{PROBLEM_PREFIX}{describe(ref)}: {error}")
        for metric in metrics:
            if metric.name in source:
                return Resolution(
                    None,
                    f"{PROBLEM_PREFIX}metric {metric.name!r} is defined both by "
                    f"{source[metric.name]} and by {describe(ref)}; rename one",
                )
            source[metric.name] = describe(ref)
            merged.append(metric)
    if len(merged) > MAX_RESOLVED_METRICS:
        return Resolution(
            None,
            f"{PROBLEM_PREFIX}{len(merged)} metrics in all, more than {MAX_RESOLVED_METRICS}",
        )
    analysis = spec.analysis.model_copy(update={"metrics": merged})
    return Resolution(spec.model_copy(update={"analysis": analysis}))
