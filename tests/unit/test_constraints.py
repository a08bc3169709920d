"""constraints.txt pins one solution of pyproject.toml's ranges, and everything installs with it.

The package's ranges stay loose for users; constraints.txt (written by scripts/lock.sh, never by
hand) is what the tests, the demo, CI and the image install. These tests fail when a dependency
is added without refreshing the lock, when a pin falls outside its range, when an install path
forgets the file, and when the environment running the tests is not the pinned one.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> list[tuple[str, Version, Marker | None]]:
    """(canonical name, pinned version, environment marker) of every line of constraints.txt."""
    found = []
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"constraints.txt pins exactly: {line}"
        found.append(
            (canonicalize_name(requirement.name), Version(specifier.version), requirement.marker)
        )
    return found


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml: the package's own and every extra's."""
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_constraints_are_written_by_the_lock_script() -> None:
    header = CONSTRAINTS.read_text(encoding="utf-8").splitlines()[:2]
    assert header[1].strip("# ") == "bash scripts/lock.sh"


def test_every_declared_dependency_has_a_pin_inside_its_range() -> None:
    pinned: dict[str, list[Version]] = {}
    for name, version, _marker in pins():
        pinned.setdefault(name, []).append(version)
    assert "canaryml" not in pinned, "the package itself is never pinned"
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in constraints.txt: bash scripts/lock.sh"
        for version in pinned[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {name}=={version}, outside pyproject's {requirement}"
            )


def test_one_pin_per_package_for_any_one_environment() -> None:
    here: dict[str, Version] = {}
    for name, version, marker in pins():
        if marker is None or marker.evaluate():
            assert name not in here, f"two pins of {name} apply here"
            here[name] = version


def test_the_environment_running_the_tests_is_the_pinned_one() -> None:
    # scripts/test.sh installs with the constraints: every pinned package present here has its
    # pinned version, and at least the package's own dependencies are present.
    mismatched = []
    for name, version, marker in pins():
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        if installed != version:
            mismatched.append(f"{name} {installed} (pinned {version})")
    assert not mismatched, "installed without constraints.txt: " + ", ".join(mismatched)
    for line in PYPROJECT["project"]["dependencies"]:
        metadata.version(Requirement(line).name)  # raises when missing


INSTALL_PATHS = {
    "scripts/test.sh": r"pip install --constraint constraints\.txt --editable '\.\[dev,demo\]'",
    "Dockerfile": r"pip install --constraint constraints\.txt \"",
    "README.md": r"pip install -c constraints\.txt '\.\[demo\]'",
    ".github/workflows/e2e.yml": r"pip install --constraint constraints\.txt -e '\.\[dev\]'",
}


def commands(path: Path) -> list[str]:
    """Shell lines of a file, continuation lines joined; of a Markdown page, its code blocks."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        text = "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL))
    return re.sub(r"\\\n\s*", "", text).splitlines()


@pytest.mark.parametrize(("path", "pattern"), sorted(INSTALL_PATHS.items()))
def test_every_install_path_uses_the_constraints(path: str, pattern: str) -> None:
    assert any(re.search(pattern, line) for line in commands(ROOT / path)), path


@pytest.mark.parametrize(
    "path",
    sorted(
        {*INSTALL_PATHS, "examples/kind/README.md"}
        | {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    ),
)
def test_no_install_of_the_package_goes_around_the_constraints(path: str) -> None:
    for line in commands(ROOT / path):
        if re.search(r"pip install [^#]*'?\.(\[|'|\s|$)", line):
            assert "constraint" in line or "-c " in line, f"{path}: {line.strip()}"


def test_ci_builds_a_new_virtual_environment_every_run() -> None:
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    venv = re.search(r'CANARYML_VENV="([^"]+)"', run)
    assert venv, ".ci/run names its virtual environment"
    assert 'rm -rf "$CANARYML_VENV"' in run
    assert run.index('rm -rf "$CANARYML_VENV"') < run.index("scripts/test.sh")
