#!/usr/bin/env bash
# Installs the Debian packages imgbuild needs to build and to run its tests (run as root), then
# those of the QEMU field test (tests/field/install-deps.sh: QEMU 10 and mmdebstrap from
# bookworm-backports, ...). IMGBUILD_SKIP_FIELD=1 leaves the field test's packages out.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  build-essential pkg-config clang libclang-dev libext2fs-dev comerr-dev \
  e2fsprogs dosfstools mtools fdisk gdisk util-linux xz-utils zstd gzip \
  openssl ca-certificates bmap-tools bats shellcheck sudo systemd \
  openjdk-17-jdk-headless python3 python3-venv
# The container test (tests/docker/run.sh): its own dockerd, and mmdebstrap to make
# debian:bookworm-slim locally (no registry is reachable).
apt-get install -y -q --no-install-recommends docker.io mmdebstrap
if [[ ${IMGBUILD_SKIP_FIELD:-0} != 1 ]]; then
  bash tests/field/install-deps.sh
fi
