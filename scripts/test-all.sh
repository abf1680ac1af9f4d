#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (debug profile) and the first-boot
# scripts (shellcheck + bats). Needs the packages from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
firstboot/tests/run.sh
bash tests/cloud/lint.sh
