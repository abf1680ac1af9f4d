#!/bin/bash
# Checks firstboot/: shellcheck on every script, then the bats suite. Exits non-zero on any failure
# and ends with one summary line "N passed, N failed" (bats tests plus the shellcheck run as one check).
set -uo pipefail
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
firstboot=${here%/*}
passed=0
failed=0

if shellcheck -x "$firstboot/imgbuild-firstboot" "$firstboot"/lib/*.sh "$here/run.sh" "$here/stub.sh" \
    && shellcheck -x -s bash "$here/helpers.bash" "$here"/*.bats; then
    echo "ok - shellcheck"
    passed=$((passed + 1))
else
    echo "not ok - shellcheck"
    failed=$((failed + 1))
fi

tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
bats --tap "$here" | tee "$tap"
bats_status=${PIPESTATUS[0]}
passed=$((passed + $(grep -c '^ok ' "$tap")))
failed=$((failed + $(grep -c '^not ok ' "$tap")))
if ((bats_status != 0 && failed == 0)); then
    echo "not ok - bats exited with status $bats_status"
    failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
((failed == 0))
