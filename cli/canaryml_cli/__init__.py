"""The one `canaryml` command: it gathers the sub-commands of the model server, the router and
the operator."""
