"""canaryml's control plane: the kopf operator that reconciles ModelDeployments.

Pure core, in layers (an import-linter contract holds them; docs/architecture.md):

- `loop`: one turn of a resource's rollout loop, behind two ports (measure; the tracks);
- `rollout`: the rollout core, from (spec, status, measurements, now) to the rollout state;
  `reconcile`: the children to create, patch or delete, the observed state, the phase, Events;
- `children`: builders of the objects a ModelDeployment owns;
- `checks`: the PromQL of every analysis check, and the labels that scope it; `verdicts`: each
  check judged against its bounds, and the analysis's record;
- `state` (the shared vocabulary) and `measurements` (what one analysis measured);
- `crd`: the CRD, generated from the resource's models (canaryml_api).

Shell: `main` (the kopf handlers and the analysis daemon), `kube` (API I/O), `providers`
(metric providers: Prometheus), `metrics` (the operator's own metrics), `settings` and `cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("canaryml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
