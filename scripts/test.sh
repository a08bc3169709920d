#!/usr/bin/env bash
# Install everything the checks need, then run them all: lint, types, layering, tests.
# This is the README's test command; CI (.ci/run) calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install --quiet --editable '.[dev]'

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
lint-imports
python3 -m pytest "$@"
