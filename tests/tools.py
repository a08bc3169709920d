"""The external tools some tests need, and the one rule for when one is missing: skip here,
fail in CI (CI=true), where scripts/test.sh installs them and nothing may be skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest
from canaryml_cli.demo.prometheus import prometheus_binary


def in_ci() -> bool:
    """CI services set CI=true (GitHub Actions, GitLab): there nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(message: str) -> NoReturn:
    """Skip the test for want of a tool, except in CI, where that is a failure."""
    if in_ci():
        pytest.fail(f"{message}: CI must not skip these tests")
    pytest.skip(message)


def promtool() -> str:
    """Prometheus's promtool, beside the prometheus binary (Debian package prometheus)."""
    binary = prometheus_binary()
    beside = Path(binary).with_name("promtool") if binary else None
    found = str(beside) if beside and beside.is_file() else shutil.which("promtool")
    if found is None:
        unavailable("promtool is not installed (apt-get install prometheus; scripts/test.sh does)")
    return found
