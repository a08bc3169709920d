"""canaryml demo: a whole canary rollout on one machine, no cluster."""
