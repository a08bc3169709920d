#!/usr/bin/env bash
# Render the Helm chart with its default values into plain manifests for `kubectl apply -f`:
# deploy/canaryml.yaml (or $1). tests/component/test_chart.py fails when the committed file and
# the chart differ; run this after changing the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-deploy/canaryml.yaml}"
helm="${CANARYML_HELM:-}"
if [ -z "$helm" ]; then
    if [ -x build/tools/helm ]; then helm=build/tools/helm; else helm="$(command -v helm)"; fi
fi
mkdir -p "$(dirname "$out")"
{
    echo "# canaryml: the operator, its CRDs and RBAC, watching the whole cluster."
    echo "# Generated from charts/canaryml with its default values by scripts/render-manifests.sh;"
    echo "# do not edit. Install: kubectl apply --server-side -f deploy/canaryml.yaml"
    echo "---"
    echo "apiVersion: v1"
    echo "kind: Namespace"
    echo "metadata:"
    echo "  name: canaryml-system"
    "$helm" template canaryml charts/canaryml --namespace canaryml-system --include-crds
} > "$out"
echo "$out" >&2
