"""The CustomResourceDefinition, generated from the pydantic models in `canaryml_api.resource`.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no JSON Schema
`null` type, no `anyOf` carrying types. pydantic emits JSON Schema 2020-12, so this module
rewrites one into the other. No library does this conversion for pydantic v2 (the generators
that exist target Go types), so it is written here.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from canaryml_api import resource as api

from canaryml_operator import children

CRD_FILE = f"{api.PLURAL}.{api.GROUP}.yaml"
# Keys of JSON Schema that the API server's JSONSchemaProps does not know, or that only add noise.
_DROPPED_KEYS = frozenset({"title", "examples", "additionalProperties", "$defs"})
# Marks, while the schema is built, an optional object whose model default is None (an opt-in).
_OPT_IN = "x-canaryml-opt-in"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canaryVersion"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """One JSON Schema node as a structural OpenAPI v3 node, `$ref`s inlined."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, defs, defaults=defaults)
    if "anyOf" in node:
        return _structural_any_of(node, defs, defaults=defaults)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and (value is None or not defaults):
            continue
        if key == "properties":
            out[key] = {
                name: structural(prop, defs, defaults=defaults) for name, prop in value.items()
            }
        elif key == "items":
            out[key] = structural(value, defs, defaults=defaults)
        else:
            out[key] = copy.deepcopy(value)

    additional = node.get("additionalProperties")
    if isinstance(additional, dict):  # a map; `false` is the structural default (pruning)
        out["additionalProperties"] = structural(additional, defs, defaults=defaults)
    if defaults:
        _default_empty_objects(out)
    return out


def _structural_any_of(
    node: dict[str, Any], defs: dict[str, Any], *, defaults: bool
) -> dict[str, Any]:
    branches = [branch for branch in node["anyOf"] if branch.get("type") != "null"]
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    if len(branches) == 1:  # `X | None`: optional in Kubernetes means absent, not null
        built = structural({**branches[0], **outer}, defs, defaults=defaults)
        if defaults and "default" in outer and outer["default"] is None:
            built[_OPT_IN] = True  # absent means off: never defaulted to {} (see below)
        return built
    types = {branch.get("type") for branch in branches}
    if types == {"string", "integer"}:  # resource quantities and ports
        rest = structural(outer, defs, defaults=defaults)
        return {**rest, "x-kubernetes-int-or-string": True}
    raise ValueError(f"cannot express anyOf {node['anyOf']} in a structural schema")


def _default_empty_objects(schema: dict[str, Any]) -> None:
    """Default optional sub-objects with no required fields to `{}`.

    The API server then fills in their own defaults, so `kubectl get -o yaml` shows the
    values the operator really uses (analysis thresholds, routing) without the user writing them.
    Not the opt-in ones (a model field `X | None = None`: analysis.sequential, .baseline,
    .labels): the API server defaults nested fields of a defaulted object too, so a `{}` there
    would switch the opt-in on for every object (and an empty baseline fails its own rule).
    """
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        opt_in = prop.pop(_OPT_IN, False)
        is_object = prop.get("type") == "object" and "properties" in prop
        if (
            is_object
            and not opt_in
            and name not in required
            and not prop.get("required")
            and "default" not in prop
        ):
            prop["default"] = {}


def build_crd() -> dict[str, Any]:
    spec_schema = api.ModelDeploymentSpec.model_json_schema(by_alias=True, mode="validation")
    status_schema = api.ModelDeploymentStatus.model_json_schema(by_alias=True, mode="validation")
    spec = structural(spec_schema, spec_schema.get("$defs", {}), defaults=True)
    status = structural(status_schema, status_schema.get("$defs", {}), defaults=False)
    spec["description"] = "The stable model, an optional canary and shadow, and the rollout policy."
    status["description"] = "Written by the operator: where the rollout is and why."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "canaryml",
                "app.kubernetes.io/part-of": "canaryml",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["canaryml"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A scikit-learn model served with canary, shadow and "
                            "automatic rollback.",
                            "required": ["spec"],
                            # The operator names Services NAME-stable, -canary and -shadow.
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= "
                                    f"{children.MAX_NAME_LENGTH} && self.metadata.name.matches("
                                    f"'{children.NAME_PATTERN}')",
                                    "message": f"the name must be at most "
                                    f"{children.MAX_NAME_LENGTH} lowercase letters, digits and "
                                    "'-', starting with a letter (the model Services are named "
                                    "NAME-stable, NAME-canary and NAME-shadow)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


_HEADER = (
    "# Generated by `canaryml crd` from canaryml_api/resource.py. Do not edit by hand:\n"
    "# change the models and run `canaryml crd --out crds/`.\n"
)


def render_crd() -> str:
    return _HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


# --- Reusable analysis: the AnalysisTemplate and ClusterAnalysisTemplate CRDs -------------------

TEMPLATE_CRD_FILE = f"{api.TEMPLATE_PLURAL}.{api.GROUP}.yaml"
CLUSTER_TEMPLATE_CRD_FILE = f"{api.CLUSTER_TEMPLATE_PLURAL}.{api.GROUP}.yaml"


def build_template_crd(*, cluster: bool) -> dict[str, Any]:
    """The CRD of AnalysisTemplate (namespaced) or ClusterAnalysisTemplate (`cluster`): the same
    spec (`AnalysisTemplateSpec`), no status."""
    kind = api.CLUSTER_TEMPLATE_KIND if cluster else api.TEMPLATE_KIND
    plural = api.CLUSTER_TEMPLATE_PLURAL if cluster else api.TEMPLATE_PLURAL
    singular = api.CLUSTER_TEMPLATE_SINGULAR if cluster else api.TEMPLATE_SINGULAR
    schema = api.AnalysisTemplateSpec.model_json_schema(by_alias=True, mode="validation")
    spec = structural(schema, schema.get("$defs", {}), defaults=True)
    spec["description"] = (
        "Custom metrics shared by the ModelDeployments that name this template in "
        "spec.analysis.templates; {{args.NAME}} in a query is replaced by the arg's value."
    )
    where = "any namespace" if cluster else "its namespace"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "canaryml",
                "app.kubernetes.io/part-of": "canaryml",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Cluster" if cluster else "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "categories": ["canaryml"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"Reusable analysis for the ModelDeployments of "
                            f"{where}.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_template_crd(*, cluster: bool) -> str:
    return _HEADER + yaml.safe_dump(build_template_crd(cluster=cluster), sort_keys=False, width=100)


def render_all() -> dict[str, str]:
    """Every CRD of canaryml.dev, by file name."""
    return {
        CRD_FILE: render_crd(),
        TEMPLATE_CRD_FILE: render_template_crd(cluster=False),
        CLUSTER_TEMPLATE_CRD_FILE: render_template_crd(cluster=True),
    }
