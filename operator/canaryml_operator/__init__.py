"""canaryml's control plane: the kopf operator that reconciles ModelDeployments.

Pure core: `api` (the resource's models), `children` (builders of owned objects), `reconcile`
(plans, status and events) and `crd`. Shell: `kube` (API I/O) and `main` (kopf handlers).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("canaryml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
