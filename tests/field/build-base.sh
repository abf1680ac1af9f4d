#!/usr/bin/env bash
# shellcheck disable=SC2016 # mmdebstrap hooks are single-quoted: $1 is the root directory, expanded by the hook
# build-base.sh OUT.img - builds a Debian 12 (bookworm) arm64 disk image shaped like Debian's own
# Raspberry Pi 4 image (raspi.debian.net): MBR, p1 FAT32 "RASPIFIRM" at 4 MiB (/boot/firmware),
# p2 ext4 "RASPIROOT" (/). Root is needed only for mmdebstrap (--mode=root chroots through
# qemu-user binfmt); the disk image itself is assembled without mounts or loop devices
# (sfdisk, mkfs.vfat --offset + mcopy, mke2fs -d -E offset).
#
# The image is left as Debian's raspi image would be: fstab by label, /etc/hostname, the root
# password EMPTY (Debian's raspi recipe does `sed -i 's,root:[^:]*:,root::,' /etc/shadow`),
# SSH host keys generated on first boot, and no first-boot unit of imgbuild's (imgbuild injects it).
#
# Env: IMG_MB (raw size, default 3072), FAT_MB (default 256), FIELD_WORK (scratch dir, default
# next to OUT). Everything in FIELD_BASE_PACKAGES below is part of the cache key (run.sh hashes
# this file).
set -euo pipefail

out=${1:?usage: build-base.sh OUT.img}
IMG_MB=${IMG_MB:-3072}
FAT_MB=${FAT_MB:-256}
FAT_START_MB=4
work=${FIELD_WORK:-$(dirname "$out")/base-work}

# The packages of the base. first boot (firstboot/README.md) needs bash, coreutils, apt/dpkg,
# sudo, unzip, curl, ca-certificates, passwd (useradd, in every Debian base) and systemd.
# python3 (test only): the stand-in nucleus runs the AWS IoT Device SDK v2 for Python (awsiotsdk and
# awscrt wheels, pre-seeded by run.sh) for the fleet-provisioning handshake over MQTT/TLS.
FIELD_BASE_PACKAGES=(
  systemd-sysv udev kmod dbus systemd-timesyncd
  linux-image-arm64 initramfs-tools zstd raspi-firmware
  e2fsprogs dosfstools
  openssh-server sudo ca-certificates curl unzip
  python3
)

log() { echo "build-base: $*" >&2; }

rm -rf "$work"
mkdir -p "$work"
rootfs=$work/rootfs

# update-initramfs is diverted to a no-op while packages install and run once at the end:
# under qemu-user each run costs minutes, and a plain install runs it twice.
divert='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs" && chmod 755 "$1/usr/sbin/update-initramfs"'
undivert='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs'
# What Debian's raspi image recipe (raspi3-image-spec, raspi_master.yaml) does to the root fs.
debianize=$(cat <<'HOOK'
set -e
cat > "$1/etc/fstab" <<FSTAB
# The root file system has fs_passno=1 as per fstab(5) for automatic fsck.
LABEL=RASPIROOT / ext4 rw 0 1
# All other file systems have fs_passno=2 as per fstab(5) for automatic fsck.
LABEL=RASPIFIRM /boot/firmware vfat rw 0 2
FSTAB
echo rpi4-20231109 > "$1/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' > "$1/etc/hosts"
rm -f "$1/etc/resolv.conf"
sed -i 's,root:[^:]*:,root::,' "$1/etc/shadow"
sed -i 's/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/; s/^#\?CONSOLES=.*/CONSOLES="ttyS1,115200 tty0"/' "$1/etc/default/raspi-firmware"
rm -f "$1"/etc/ssh/ssh_host_*
cat > "$1/etc/systemd/system/rpi-generate-ssh-host-keys.service" <<UNIT
[Unit]
Description=generate SSH host keys
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=multi-user.target
UNIT
chroot "$1" systemctl enable rpi-generate-ssh-host-keys.service
mkdir -p "$1/var/log/journal"
HOOK
)

includes=$(IFS=,; echo "${FIELD_BASE_PACKAGES[*]}")
log "mmdebstrap bookworm arm64 ($includes)"
mmdebstrap --mode=root --arch=arm64 --variant=minbase \
  --components=main,non-free-firmware \
  --include="$includes" \
  --essential-hook="$divert" \
  --customize-hook="$undivert" \
  --customize-hook="$debianize" \
  --customize-hook='chroot "$1" update-initramfs -c -k all' \
  --customize-hook='chroot "$1" apt-get clean' \
  bookworm "$rootfs"

# raspi-firmware's hooks filled /boot/firmware: that is the FAT partition's content
mv "$rootfs/boot/firmware" "$work/fw"
mkdir "$rootfs/boot/firmware"
log "firmware partition files: $(find "$work/fw" -maxdepth 1 -type f -printf '%f ')"

root_start_mb=$((FAT_START_MB + FAT_MB))
root_mb=$((IMG_MB - root_start_mb))
tmp=$out.tmp
rm -f "$tmp"
truncate -s "${IMG_MB}M" "$tmp"
sfdisk --quiet "$tmp" <<EOF
label: dos
unit: sectors
start=$((FAT_START_MB * 2048)), size=$((FAT_MB * 2048)), type=c, bootable
start=$((root_start_mb * 2048)), size=$((root_mb * 2048)), type=83
EOF
# 2 KiB clusters: a 256 MiB FAT32 with default clusters has too few clusters for mtools' FAT32
mkfs.vfat -F 32 -S 512 -s 4 -n RASPIFIRM --offset $((FAT_START_MB * 2048)) "$tmp" $((FAT_MB * 1024)) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -p -i "$tmp@@${FAT_START_MB}M" "$work"/fw/* ::/
mke2fs -q -F -t ext4 -L RASPIROOT -d "$rootfs" -E offset=$((root_start_mb * 1048576)) "$tmp" "${root_mb}M"
# Real root file systems have hashed directories (mke2fs -d makes none): let e2fsck build them.
rc=0
e2fsck -fyD "$tmp?offset=$((root_start_mb * 1048576))" >/dev/null 2>&1 || rc=$?
[ "$rc" -le 1 ] || { log "e2fsck -fyD failed with status $rc"; exit 1; }
mv "$tmp" "$out"
rm -rf "$work"
log "done: $out ($(du -m "$out" | cut -f1) MiB allocated of $IMG_MB MiB)"
