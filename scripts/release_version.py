"""The release's version, from a `v*` tag, checked against the chart and the Python package.

    python scripts/release_version.py v0.2.0        # prints version=0.2.0 and prerelease=false

The tag (without its `v`) must be the chart's `version` and `appVersion` (SemVer, as Helm
wants) and, read as PEP 440, the package's `[project] version` (`v0.2.0-rc.1` is `0.2.0rc1`);
otherwise it exits 1 saying which differs. A SemVer pre-release (anything after a `-`) is a
pre-release: its image gets no `latest` tag and its GitHub release is marked as such.
Run by .github/workflows/release.yml (it appends the two lines to $GITHUB_OUTPUT).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
# SemVer 2.0.0, as Helm checks a chart's version.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def chart_field(text: str, key: str) -> str | None:
    """A top-level scalar of Chart.yaml (`version: 0.1.0`, `appVersion: "0.1.0"`)."""
    match = re.search(rf"^{key}:\s*[\"']?([^\"'\s#]+)[\"']?\s*(?:#.*)?$", text, flags=re.M)
    return match.group(1) if match else None


def check(tag: str, root: Path = ROOT) -> tuple[str, bool]:
    """(version, prerelease) for `tag`; ValueError saying what differs."""
    if not tag.startswith("v"):
        raise ValueError(f"tag {tag!r}: a release tag is v<SemVer>, e.g. v0.2.0")
    version = tag[1:]
    found = SEMVER.match(version)
    if found is None:
        raise ValueError(f"tag {tag!r}: {version!r} is not SemVer (MAJOR.MINOR.PATCH[-PRE])")
    chart = (root / "charts" / "canaryml" / "Chart.yaml").read_text(encoding="utf-8")
    problems = [
        f"charts/canaryml/Chart.yaml {key} is {value!r}, the tag says {version!r}"
        for key in ("version", "appVersion")
        if (value := chart_field(chart, key)) != version
    ]
    with (root / "pyproject.toml").open("rb") as file:
        package = str(tomllib.load(file)["project"]["version"])
    try:
        same = Version(package) == Version(version)
    except InvalidVersion:
        same = False
    if not same:
        problems.append(f"pyproject.toml version is {package!r}, the tag says {version!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return version, found.group(4) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", help="the pushed tag, e.g. v0.2.0")
    args = parser.parse_args(argv)
    try:
        version, prerelease = check(args.tag)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"version={version}")
    print(f"prerelease={'true' if prerelease else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
