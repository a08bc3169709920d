"""canaryml's control plane: the kopf operator reconciling ModelDeployments (not built yet)."""
