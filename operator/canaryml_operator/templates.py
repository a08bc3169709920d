"""The shell of reusable analysis: read the templates a ModelDeployment names, then resolve.

Templates are read with the Kubernetes API at each reconcile of a resource that has a canary
and at each of its analyses (no watch, no cache): an edit of a template reaches every resource
that names it at its next analysis, and the operator keeps nothing in memory. The resolution
itself is pure (`templating.resolve`).
"""

from __future__ import annotations

from typing import Any

from canaryml_api import resource as api

from canaryml_operator import templating
from canaryml_operator.kube import KubeClient, KubeError

TEMPLATES_PATH = f"/apis/{api.GROUP}/{api.VERSION}"


def template_path(ref: api.AnalysisTemplateRef, namespace: str) -> str:
    """AnalysisTemplates live in the resource's namespace; ClusterAnalysisTemplates in none."""
    if ref.kind == api.CLUSTER_TEMPLATE_KIND:
        return f"{TEMPLATES_PATH}/{api.CLUSTER_TEMPLATE_PLURAL}/{ref.name}"
    return f"{TEMPLATES_PATH}/namespaces/{namespace}/{api.TEMPLATE_PLURAL}/{ref.name}"


def read_templates(
    kube: KubeClient, namespace: str, refs: list[api.AnalysisTemplateRef]
) -> dict[templating.TemplateKey, dict[str, Any] | None]:
    """Each referenced template as the API server has it (None: it does not exist, or its kind
    is not installed). Any other error of the API server is raised (a KubeError): the caller
    retries, as for any other read."""
    found: dict[templating.TemplateKey, dict[str, Any] | None] = {}
    for ref in refs:
        key = templating.key_of(ref)
        if key in found:
            continue
        try:
            found[key] = kube.request("GET", template_path(ref, namespace))
        except KubeError as error:
            if error.status != 404:
                raise
            found[key] = None
    return found


def resolve(
    kube: KubeClient, namespace: str, spec: api.ModelDeploymentSpec
) -> templating.Resolution:
    """`spec` with its templates' metrics merged in (or why not). A resource without a canary
    has nothing to analyse: its templates are not read."""
    if not spec.analysis.templates or spec.canary is None:
        return templating.Resolution(spec)
    found = read_templates(kube, namespace, list(spec.analysis.templates))
    return templating.resolve(spec, found)


def held_by_templates(spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus) -> bool:
    """Whether the last reconcile found the spec's templates missing or unusable (the status
    says so; the spec itself is valid): then only a look at the templates can release it."""
    if not spec.analysis.templates or spec.canary is None:
        return False
    degraded = next((c for c in status.conditions if c.type == "Degraded"), None)
    return (
        degraded is not None
        and degraded.status == "True"
        and (
            degraded.reason == templating.TEMPLATE_NOT_FOUND
            or degraded.message.startswith(templating.PROBLEM_PREFIX)
        )
    )
