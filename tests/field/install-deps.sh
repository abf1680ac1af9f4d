#!/usr/bin/env bash
# Installs what the QEMU field test (tests/field/run.sh) needs. Run as root on Debian bookworm.
# QEMU 10.x comes from bookworm-backports: bookworm's 7.2 has no `-M raspi4b`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SOURCES
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

apt-get update -q
apt-get install -y -q --no-install-recommends -t bookworm-backports \
  qemu-system-arm qemu-user qemu-user-binfmt qemu-utils mmdebstrap
apt-get install -y -q --no-install-recommends \
  device-tree-compiler arch-test mtools dosfstools fdisk e2fsprogs xz-utils \
  openssh-client openssl openjdk-17-jdk-headless python3 systemd coreutils
# The AWS IoT stand-in on 127.0.0.1 (iot.sh): MQTT broker, the responder's MQTT client and boto3 (for
# moto), socat for QEMU's guestfwd, pip to download the guest's AWS IoT Device SDK wheels.
apt-get install -y -q --no-install-recommends \
  mosquitto python3-paho-mqtt python3-boto3 python3-pip socat
