"""Test support shared by tests/ and benchmarks/: the Kubernetes API emulator and a cluster
client around it. Not part of the canaryml distribution (it needs kmock, a dev dependency)."""
