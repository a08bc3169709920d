"""The Helm chart as the tests see it: `helm template` output, parsed.

helm comes from scripts/install-tools.sh (build/tools/helm), $CANARYML_HELM or PATH. Without
it the chart tests skip, except in CI (CI=true), where scripts/test.sh installs it first and a
missing helm is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.tools import unavailable

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "canaryml"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
RELEASE = "canaryml"
NAMESPACE = "canaryml-system"


def helm_binary() -> str:
    for candidate in (os.environ.get("CANARYML_HELM"), str(ROOT / "build" / "tools" / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("helm")
    if found:
        return found
    unavailable("helm is not installed: run scripts/install-tools.sh")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_args(
    *,
    values_files: Sequence[Path] = (),
    values: Mapping[str, Any] | None = None,
    include_crds: bool = False,
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]  # helm's own typing: "true" is a boolean
    return args


def render(
    *,
    values_files: Sequence[Path] = (),
    values: Mapping[str, Any] | None = None,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The chart's objects for these values, in helm's order."""
    text = helm(
        *template_args(values_files=values_files, values=values, include_crds=include_crds)
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Any]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
