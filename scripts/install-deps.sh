#!/usr/bin/env bash
# Installs the Debian packages imgbuild needs to build and to run its tests (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  build-essential pkg-config clang libclang-dev libext2fs-dev comerr-dev \
  e2fsprogs dosfstools mtools fdisk gdisk util-linux xz-utils zstd gzip \
  openssl ca-certificates bmap-tools bats shellcheck sudo systemd \
  openjdk-17-jdk-headless python3 python3-venv
