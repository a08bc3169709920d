"""`canaryml demo` refuses what it cannot run, before starting anything: exit 2 and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from canaryml_cli.main import app
from typer.testing import CliRunner


def spec_file(tmp_path: Path, *, canary: bool = True) -> Path:
    spec = {"model": {"uri": "file:///m/stable", "version": "1.0.0"}}
    if canary:
        spec["canary"] = {"model": {"uri": "file:///m/canary", "version": "1.1.0"}}
    manifest = {"kind": "ModelDeployment", "metadata": {"name": "x"}, "spec": spec}
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "meteor"], "unknown scenario 'meteor'"),
        (["--prometheus", "sometimes"], "use auto, off, or the http(s):// URL"),
        (["--spec", "{spec}"], "--spec needs --traffic CSV"),
        (["--spec", "{nocanary}", "--traffic", "x.csv"], "has none"),
        (["--spec", "{spec}", "--scenario", "shadow-disagree"], "bundled bad model"),
        (["--spec", "{spec}", "--traffic", "{missing}"], "cannot read traffic rows"),
    ],
)
def test_what_the_demo_cannot_run_exits_2_with_the_reason(
    tmp_path: Path, args: list[str], message: str
) -> None:
    with_canary = spec_file(tmp_path)
    nocanary_dir = tmp_path / "n"
    nocanary_dir.mkdir()
    values = {
        "spec": with_canary,
        "nocanary": spec_file(nocanary_dir, canary=False),
        "missing": tmp_path / "missing.csv",
    }
    argv = ["demo", "--no-live", *(a.format(**values) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "logs").exists()
