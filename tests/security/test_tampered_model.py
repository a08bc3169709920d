"""A tampered model against a real `canaryml serve` at its default settings (issue 16, item 2).

The attacker replaces `model.joblib` with a pickle whose loading runs a command (here: it
creates a marker file, nothing else) and rewrites `manifest.json` to match, so that every hash
the artifact carries is consistent. Only a digest pinned outside the artifact can tell, and the
server now refuses to load any artifact without one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from tests.integration.conftest import free_port, serve_command
from tests.security.conftest import Spawned

pytestmark = pytest.mark.integration


class PickleBomb:
    """Unpickling it creates `marker` (the stand-in for a shell command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


def _tamper(folder: Path, marker: Path) -> None:
    """The bomb in place of the model, the manifest rewritten to match and to unpickle it."""
    joblib.dump(PickleBomb(marker), folder / "model.joblib")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.joblib"] = hashlib.sha256(
        (folder / "model.joblib").read_bytes()
    ).hexdigest()
    manifest["runtime"]["runtime"] = "sklearn"
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _defaults() -> dict[str, str]:
    """The environment without any CANARYML_* setting: the server's defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CANARYML_")}


def _serve(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`canaryml serve` that is expected to refuse (it exits; never left running)."""
    return subprocess.run(
        serve_command(folder, free_port(), *args, pin=False),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_tampered_model_is_refused_at_default_settings(
    example_models: dict[str, Path], tmp_path: Path, spawn: Callable[..., Spawned]
) -> None:
    original = example_models["stable"]
    pinned = _digest(original)
    tampered = tmp_path / "tampered"
    shutil.copytree(original, tampered)
    marker = tmp_path / "command-ran"
    _tamper(tampered, marker)

    # No digest configured: refused before anything is read, the command never runs.
    unpinned = _serve(tampered, env=_defaults())
    assert unpinned.returncode == 2, unpinned.stderr
    assert "without a configured sha256" in unpinned.stderr
    assert "Traceback" not in unpinned.stderr
    assert not marker.exists()

    # The digest of the genuine artifact: the rewritten manifest does not match it.
    wrong = _serve(tampered, "--sha256", pinned, env=_defaults())
    assert wrong.returncode == 2, wrong.stderr
    assert f"but {pinned} was expected" in wrong.stderr
    assert not marker.exists()

    # The genuine artifact with its digest serves.
    port = free_port()
    spawn(
        serve_command(original, port, "--sha256", pinned, pin=False),
        f"http://127.0.0.1:{port}/v2/health/ready",
        env={"CANARYML_RUNTIME": "sklearn"},
    )
    assert httpx.get(f"http://127.0.0.1:{port}/v2/models/breast-cancer").status_code == 200

    # What the default protects against: opted out, the same artifact runs its command (the
    # server may then go on serving whatever the pickle gave: stopped once the marker shows).
    opted_out = subprocess.Popen(
        serve_command(tampered, free_port(), pin=False),
        env={**_defaults(), "CANARYML_REQUIRE_SHA256": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and opted_out.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        opted_out.kill()
        opted_out.wait()
