"""`canaryml demo` refuses what it cannot run, before starting anything: exit 2 and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_cli.main import app
from typer.testing import CliRunner


def spec_file(
    tmp_path: Path,
    *,
    canary: bool = True,
    uris: tuple[str, str] | None = None,
    pinned: bool = True,
) -> Path:
    """A ModelDeployment over two model folders made under `tmp_path` (or at `uris`)."""
    folders = [tmp_path / "m" / "stable", tmp_path / "m" / "canary"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    stable, canary_uri = uris or (folders[0].as_uri(), folders[1].as_uri())
    digests = {"sha256": "a" * 64} if pinned else {}
    spec: dict[str, Any] = {"model": {"uri": stable, "version": "1.0.0", **digests}}
    if canary:
        spec["canary"] = {"model": {"uri": canary_uri, "version": "1.1.0", **digests}}
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
        (
            ["--spec", "{spec}", "--scenario", "shadow-disagree"],
            "--scenario shadow-disagree swaps in",
        ),
        (
            ["--spec", "{spec}", "--scenario", "accuracy"],
            "--scenario accuracy swaps in",
        ),
        (["--spec", "{spec}", "--traffic", "{missing}"], "cannot read traffic rows"),
        (["--spec", "{unpinned}", "--traffic", "x.csv"], "spec.canary.model.sha256 not set"),
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
        "unpinned": spec_file(tmp_path / "u", pinned=False),
        "missing": tmp_path / "missing.csv",
    }
    argv = ["demo", "--no-live", *(a.format(**values) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "logs").exists()


def test_a_spec_with_folder_paths_is_read_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain folder paths pass the spec's checks; a missing one says where it was looked for."""
    path = spec_file(tmp_path, uris=("m/stable", str(tmp_path / "m" / "canary")))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--no-live", "--spec", str(path)])
    assert result.exit_code == 2, result.output
    assert "--spec needs --traffic CSV" in result.output  # past every check of the spec
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(app, ["demo", "--no-live", "--spec", str(path)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # rich wraps long lines, even inside a word
    assert f"spec.model.uri 'm/stable': no such folder {elsewhere / 'm' / 'stable'}".replace(
        " ", ""
    ) in said.replace(" ", "")
    assert "a relative path is read from the current folder" in said
