"""canaryml's data plane: model packaging, the model server, drift and metrics."""
