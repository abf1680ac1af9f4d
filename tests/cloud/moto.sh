#!/usr/bin/env bash
# The AWS emulator of imgbuild's cloud tests: moto server (pinned) plus moto_shim.py, which adds
# IoT fleet-provisioning templates and Greengrass v2 (both missing from moto).
#
#   tests/cloud/moto.sh setup        create/refresh the venv; prints its path on stdout
#   tests/cloud/moto.sh start [PORT] run the shim in the foreground on 127.0.0.1 (default: a free port);
#                                    its first stdout line is `moto-shim listening on http://127.0.0.1:PORT`
#
# The venv is $MOTO_VENV, or <workspace>/target-cloud-venv. The Rust tests in imgbuild/cloud/tests
# call `setup` themselves and start one private server per test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${MOTO_VENV:-$root/target-cloud-venv}"
moto_version="5.2.5"

setup() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$moto_version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import flask, werkzeug  # the server extra
sys.exit(0 if version("moto") == sys.argv[1] else 1)
PY
    then
        echo "$venv"
        return
    fi
    echo "moto.sh: installing moto[server]==$moto_version into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "moto[server]==$moto_version" >&2
    echo "$venv"
}

case "${1:-}" in
    setup) setup ;;
    start)
        setup >/dev/null
        exec "$venv/bin/python" "$here/moto_shim.py" --host 127.0.0.1 --port "${2:-0}"
        ;;
    *)
        echo "usage: $0 setup|start [PORT]" >&2
        exit 2
        ;;
esac
