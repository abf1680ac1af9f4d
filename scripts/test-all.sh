#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (debug profile), the first-boot scripts
# (shellcheck + bats), the cloud lint, and the QEMU field test (tests/field/run.sh: a real Debian
# arm64 Raspberry Pi image built by imgbuild boots and provisions itself; root only, ~30 min on
# 2 cores). Needs the packages from scripts/install-deps.sh.
# IMGBUILD_SKIP_FIELD=1 skips the field test (quick local runs; CI always runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
firstboot/tests/run.sh
bash tests/cloud/lint.sh
# The container test: a private dockerd builds the Dockerfile around this workspace's debug binary
# and runs the README's container command as an unprivileged uid (root only; IMGBUILD_SKIP_DOCKER=1
# skips it). `cargo build` is a no-op when cargo test already built the binary.
if [[ ${IMGBUILD_SKIP_DOCKER:-0} != 1 ]]; then cargo build --workspace; fi
bash tests/docker/run.sh

if [[ ${IMGBUILD_SKIP_FIELD:-0} == 1 ]]; then
  echo "field test skipped (IMGBUILD_SKIP_FIELD=1)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "the field test (tests/field/run.sh) needs root (binfmt_misc, mmdebstrap's chroot):" \
    "run as root, or set IMGBUILD_SKIP_FIELD=1 to skip it" >&2
  exit 1
fi
# The imgbuild binary of this workspace (cargo test built it; a no-op when it is up to date).
cargo build --workspace
# Packages come from scripts/install-deps.sh; every boot is bounded by FIELD_BOOT_TIMEOUT and the
# whole field test by FIELD_TOTAL_TIMEOUT (seconds).
IMGBUILD=${IMGBUILD:-${CARGO_TARGET_DIR:-$PWD/target}/debug/imgbuild} FIELD_SKIP_DEPS=${FIELD_SKIP_DEPS:-1} \
  timeout --kill-after=60 "${FIELD_TOTAL_TIMEOUT:-3600}" tests/field/run.sh
