"""`canaryml package` is reproducible: the same inputs give the same digest, so it can be pinned."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from canaryml_cli.main import app
from canaryml_server.artifact import MANIFEST_FILE, load_artifact, sha256_file
from typer.testing import CliRunner, Result

_runs = itertools.count()


@pytest.fixture(autouse=True)
def _no_source_date(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some CI systems set it for every build; these tests choose.
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _invoke(argv: list[str]) -> Result:
    return CliRunner().invoke(app, argv)


def _package(
    tmp_path: Path, model: Path, reference: Path, *options: str
) -> tuple[str, Path, Result]:
    """Run `canaryml package` into a fresh folder: the digest it prints, the folder, the run."""
    out = tmp_path / f"run{next(_runs)}"
    argv = ["package", str(model), "--reference", str(reference), "--out", str(out)]
    result = _invoke([*argv, "--target", "target", "--name", "bc", *options])
    assert result.exit_code == 0, result.output
    digest = result.stdout.strip()
    assert digest == sha256_file(out / MANIFEST_FILE)
    return digest, out, result


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(("runtime", "served"), [("auto", "onnx"), ("sklearn", "sklearn")])
def test_the_same_inputs_give_the_same_digest(
    example_models: dict[str, Path], tmp_path: Path, runtime: str, served: str
) -> None:
    root = example_models["root"]
    model, reference = root / "stable.joblib", root / "train.csv"
    first, first_folder, run = _package(tmp_path, model, reference, "--runtime", runtime)
    second, second_folder, _ = _package(tmp_path, model, reference, "--runtime", runtime)
    assert second == first
    assert _files(second_folder) == _files(first_folder)
    manifest = json.loads((first_folder / MANIFEST_FILE).read_text())
    assert manifest["runtime"]["runtime"] == served
    assert "created" not in manifest
    if served == "onnx":
        # The timings are still measured and shown, just not pinned.
        assert "one row" in run.stderr
        assert not {"sklearn_us_per_row", "onnx_us_per_row"} & set(manifest["runtime"])
    assert load_artifact(first_folder, expected_sha256=first).predictor.runtime == served


def test_a_changed_input_changes_the_digest(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    root = example_models["root"]
    model, reference = root / "stable.joblib", root / "train.csv"
    fewer_rows = tmp_path / "fewer.csv"
    pd.read_csv(reference).iloc[:-1].to_csv(fewer_rows, index=False)
    base, _, _ = _package(tmp_path, model, reference, "--runtime", "sklearn")
    variants = {
        "model": _package(tmp_path, root / "bad.joblib", reference, "--runtime", "sklearn"),
        "reference": _package(tmp_path, model, fewer_rows, "--runtime", "sklearn"),
        "version": _package(tmp_path, model, reference, "--runtime", "sklearn", "--version", "2"),
        "runtime": _package(tmp_path, model, reference, "--runtime", "auto"),
    }
    digests = {what: digest for what, (digest, _, _) in variants.items()}
    assert base not in digests.values(), digests
    assert len(set(digests.values())) == len(digests), digests


def test_source_date_epoch_is_the_recorded_creation_time(
    example_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = example_models["root"]
    model, reference = root / "bad.joblib", root / "train.csv"
    unset, _, _ = _package(tmp_path, model, reference, "--runtime", "sklearn")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first, folder, _ = _package(tmp_path, model, reference, "--runtime", "sklearn")
    second, _, _ = _package(tmp_path, model, reference, "--runtime", "sklearn")
    assert first == second != unset
    expected = datetime.fromtimestamp(1_700_000_000, UTC)
    assert load_artifact(folder, expected_sha256=first).manifest.created == expected
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    out = tmp_path / "refused"
    argv = ["package", str(model), "--reference", str(reference), "--out", str(out)]
    refused = _invoke([*argv, "--target", "target"])
    assert refused.exit_code == 2
    assert "SOURCE_DATE_EPOCH must be whole seconds since 1970, not 'yesterday'" in refused.stderr
    assert not out.exists()


def test_an_artifact_with_a_clock_time_and_timings_still_loads(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    """Artifacts packaged before reproducible digests carried both in the manifest."""
    root = example_models["root"]
    _, folder, _ = _package(
        tmp_path, root / "bad.joblib", root / "train.csv", "--runtime", "sklearn"
    )
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["created"] = "2025-01-02T03:04:05.678Z"
    manifest["runtime"] |= {"sklearn_us_per_row": 120.5, "onnx_us_per_row": 9.5}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_artifact(folder, expected_sha256=sha256_file(folder / MANIFEST_FILE))
    assert loaded.manifest.created == datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_package_shows_the_digest_to_paste(example_models: dict[str, Path], tmp_path: Path) -> None:
    """stdout stays the digest alone; stderr shows the line and the model block to paste, since
    the operator and the server refuse an unpinned model by default."""
    root = example_models["root"]
    digest, _, run = _package(
        tmp_path, root / "stable.joblib", root / "train.csv", "--runtime", "sklearn"
    )
    assert run.stdout == f"{digest}\n"
    assert f"sha256:{digest}\n" in run.stderr
    assert f'    version: "0.1.0"\n    sha256: {digest}' in run.stderr


def test_package_warns_when_the_reference_is_too_small_for_the_drift_test(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    """A reference too small for its bins is reported at packaging time (issue 17); the
    bundled 398-row reference is not."""
    root = example_models["root"]
    small = tmp_path / "small.csv"
    small.write_text("".join((root / "train.csv").read_text().splitlines(keepends=True)[:31]))
    _, _, few = _package(tmp_path / "a", root / "stable.joblib", small, "--runtime", "sklearn")
    assert "warning: with 30 reference rows and a 1000-row drift window" in few.stderr
    assert "reference rows would do" in few.stderr
    _, _, enough = _package(
        tmp_path / "b", root / "stable.joblib", root / "train.csv", "--runtime", "sklearn"
    )
    assert "warning" not in enough.stderr
