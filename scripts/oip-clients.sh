#!/usr/bin/env bash
# Make the virtual environments of the Open Inference Protocol clients the integration tests
# run (tests/integration/test_oip_clients.py): KServe's Python client (kserve 0.21) and
# MLServer's codecs (mlserver 1.7.1). Each has its own: neither installs beside canaryml's pins
# (kserve 0.21 wants other versions of fastapi, uvicorn and protobuf) nor beside the other.
#
# They go under $1 (default build/oip-clients), pinned by the lists in
# tests/integration/oip_clients/ (pip freeze of a working set); a stamp of the pins makes a
# second run a no-op. About a minute each the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-build/oip-clients}"
pins=tests/integration/oip_clients
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# mlserver 1.7.1 installs on Python 3.9 to 3.12, and the pins (numpy 2.4) need 3.11 or newer:
# the first of these interpreters within 3.11-3.12 makes both environments.
python=""
for candidate in python3 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && "$candidate" -c \
        'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "oip-clients.sh: the clients need Python 3.11 or 3.12 (mlserver 1.7.1: below 3.13);" \
        "none of python3, python3.12, python3.11 is" >&2
    exit 1
fi

for client in kserve mlserver; do
    venv="$dest/$client"
    list="$pins/$client-constraints.txt"
    package="$(grep -i "^$client==" "$list")"
    stamp="$(sha256sum "$list" | cut -d' ' -f1)"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$stamp" ]; then
        continue
    fi
    echo "oip-clients.sh: making $venv ($package)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --constraint "$list" "$package" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "oip-clients.sh: pip could not install $package; its output is above" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$stamp" >"$venv/.pins"
done
