"""The contract package is the one place of each shared name.

Metric and header names, and the track list, are written as literals in `canaryml_api` only;
every metric it declares is documented in docs/metrics.md. A name copied into another module
would drift from the contract unnoticed (as the router's copy of GROUP/VERSION/PLURAL could).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from canaryml_api import telemetry, tracks

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = [
    path
    for path in (ROOT / name for name in ("api", "httpd", "server", "router", "operator", "cli"))
    if path.is_dir()
]
CONTRACT = ROOT / "api" / "canaryml_api"

METRICS = sorted(
    value
    for name, value in vars(telemetry).items()
    if name.isupper()
    and isinstance(value, str)
    and value.startswith("canaryml_")
    and not name.endswith("_BUCKET")  # a histogram's series, derived from its name
)
HEADERS = [
    telemetry.VERSION_HEADER,
    telemetry.TRACK_HEADER,
    telemetry.PREDICTION_IDS_HEADER,
    telemetry.INFERENCE_HEADER_LENGTH_HEADER,
]


def _modules() -> Iterator[Path]:
    for directory in PACKAGE_DIRS:
        yield from sorted(directory.rglob("*.py"))


def _literals(path: Path) -> Iterator[tuple[int, str]]:
    """Every str and bytes constant of a module (f-string parts included), with its line."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            value = node.value
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            yield node.lineno, text


def _written(names: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in names}
    for path in _modules():
        for line, text in _literals(path):
            for name in names:
                # A metric name inside a longer literal (a query, a help text) counts too.
                if name in text and not (text != name and f"{name}_" in text):
                    found[name].append(f"{path.relative_to(ROOT)}:{line}")
    return found


def test_there_are_metric_names_to_check() -> None:
    assert telemetry.REQUESTS_TOTAL in METRICS and len(METRICS) >= 15


@pytest.mark.parametrize("name", METRICS + HEADERS)
def test_each_name_is_written_in_the_contract_only(name: str) -> None:
    places = _written([name])[name]
    outside = [place for place in places if not place.startswith("api/")]
    assert places, f"{name} is not written anywhere"
    assert not outside, f"{name} is written again outside canaryml_api: {outside}"


def test_the_track_list_is_written_once() -> None:
    spelled = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            elements = node.elts if isinstance(node, ast.Tuple | ast.List) else None
            if elements is None and isinstance(node, ast.Subscript):
                inner = node.slice
                elements = inner.elts if isinstance(inner, ast.Tuple) else None
            if elements is None:
                continue
            values = [e.value for e in elements if isinstance(e, ast.Constant)]
            if values == list(tracks.TRACKS):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert spelled and all(place.startswith("api/canaryml_api/tracks.py") for place in spelled), (
        spelled
    )


@pytest.mark.parametrize("name", METRICS)
def test_each_metric_is_documented(name: str) -> None:
    page = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    # Counters are declared by their prometheus_client name and exposed with _total.
    assert f"`{name}`" in page or f"`{name}_total`" in page
