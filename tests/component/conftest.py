"""Fixtures of the component tier: the operator under kopf against the API emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from canaryml_testing.cluster import Cluster, running_emulator, running_operator


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """An emulated cluster with the canaryml operator running against it."""
    async with running_emulator(tmp_path, monkeypatch) as (emulator, _):
        import canaryml_operator.main  # noqa: F401  (registers the handlers)

        async with running_operator():
            yield Cluster(emulator)
