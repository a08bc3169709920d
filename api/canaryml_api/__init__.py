"""canaryml's contracts: what the operator, the model server, the router and the CLI agree on.

The bottom of the stack. It imports nothing of canaryml and nothing outside the standard library
but pydantic (an import-linter contract holds it), so every program can depend on it:

- `resource`: the ModelDeployment API (canaryml.dev/v1alpha1), its defaults, `parse_spec` and
  `parse_status`;
- `tracks`: the track vocabulary and how a track's Service is named and reached;
- `telemetry`: metric, label and header names, the latency buckets;
- `routing`: the one rule from (spec, status) to the traffic each track gets.

See docs/architecture.md and docs/metrics.md.
"""
