"""The one `canaryml` command: it gathers the sub-commands of the server and the operator."""
