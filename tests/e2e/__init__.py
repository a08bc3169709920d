"""End-to-end tests on a real cluster (kind in CI); they skip where none is reachable."""
