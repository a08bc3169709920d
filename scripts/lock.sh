#!/usr/bin/env bash
# Regenerate constraints.txt: the exact versions the tests, the demo and the image install.
#
# The package's own ranges (pyproject.toml) stay loose for people who install canaryml into an
# environment of theirs; this file pins one solution of them for every extra, on every platform
# and Python the package supports (uv's universal resolution), so a fresh machine installs what
# CI last passed with. Refresh it on purpose, after changing a dependency or to take upgrades:
#
#   bash scripts/lock.sh              # keep the pins that still fit, add what is missing
#   bash scripts/lock.sh --upgrade    # take the newest versions the ranges allow
#
# then run `bash scripts/test.sh` in a new virtual environment before committing both.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
tools="build/lock-tools"
if [ "$("$tools/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# Every extra (the image takes s3 and gcs, the tests dev, the demo demo), Python 3.11 and newer.
"$tools/bin/uv" pip compile pyproject.toml \
    --extra dev --extra demo --extra s3 --extra gcs --extra mlflow \
    --universal --python-version 3.11 \
    --no-emit-package canaryml \
    --custom-compile-command "bash scripts/lock.sh" \
    --output-file constraints.txt --quiet "$@"
