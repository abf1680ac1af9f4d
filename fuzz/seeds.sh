#!/usr/bin/env bash
# Builds the seed inputs of every fuzz target into fuzz/seeds/TARGET/ from Debian tools
# (sfdisk, sgdisk, mkfs.vfat, mke2fs, xz, gzip, zstd, zip) and the repository's own files.
# Nothing is downloaded. Run by run.sh; safe to re-run (it starts from scratch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
seeds=$here/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{partition_table,fat_probe,ext4_probe,toml_files,allowlist,unit_install,decompress}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- partition tables: small MBR (primary + extended + logical) and GPT images -------------
pt=$seeds/partition_table
truncate -s 64K "$pt/mbr.img"
printf 'label: dos\nlabel-id: 0x12345678\nstart=8, size=32, type=c, bootable\nstart=40, size=80, type=5\nstart=48, size=24, type=83\nstart=80, size=24, type=83\n' |
    sfdisk -q "$pt/mbr.img" >/dev/null
truncate -s 48K "$pt/gpt.img"
sgdisk -q -o -n 1:34:47 -t 1:ef00 -c 1:boot -n 2:48:60 -t 2:8300 -c 2:root -A 2:set:2 "$pt/gpt.img" >/dev/null
# A 4Kn GPT: 4096-byte sectors (header at byte 4096).
truncate -s 64K "$pt/gpt4k.img"
printf 'label: gpt\nsector-size: 4096\nfirst-lba: 6\nstart=6, size=4, type=L\n' |
    sfdisk -q --sector-size 4096 "$pt/gpt4k.img" >/dev/null 2>&1 || rm -f "$pt/gpt4k.img"
# An MBR disk whose first partition holds a FAT file system (the probe runs on it).
truncate -s 96K "$tmp/fat.part"
mkfs.vfat -n BOOT -i 0a0b0c0d "$tmp/fat.part" >/dev/null
truncate -s 160K "$pt/mbr-fat.img"
printf 'label: dos\nstart=64, size=192, type=c\n' | sfdisk -q "$pt/mbr-fat.img" >/dev/null
dd if="$tmp/fat.part" of="$pt/mbr-fat.img" bs=512 seek=64 conv=notrunc status=none

# --- FAT: FAT12 and FAT16 volumes, and the first 8 KiB of a FAT32 one ----------------------
fp=$seeds/fat_probe
truncate -s 64K "$fp/fat12.img"
mkfs.vfat -F 12 -n FAT12 -i 11223344 "$fp/fat12.img" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i "$fp/fat12.img" "$repo/README.md" ::/config.txt 2>/dev/null || true
truncate -s 4M "$tmp/fat16.img"
mkfs.vfat -F 16 -s 1 -n FAT16 "$tmp/fat16.img" >/dev/null
head -c 48K "$tmp/fat16.img" >"$fp/fat16-head.img"
truncate -s 40M "$tmp/fat32.img"
mkfs.vfat -F 32 -n FAT32 "$tmp/fat32.img" >/dev/null
head -c 8K "$tmp/fat32.img" >"$fp/fat32-head.img"
# Keep the seeds small: FAT12 with data beyond 64 KiB is cut.
for f in "$fp"/*.img; do truncate -s '<64K' "$f"; done

# --- ext2/3/4: tiny file systems (1 KiB blocks) ---------------------------------------------
ep=$seeds/ext4_probe
# (ext3 needs a journal of at least 1 MiB: too big for a seed; the probe's feature-flag checks
# are reached by mutating these.)
for t in ext2 ext4; do
    truncate -s 128K "$ep/$t.img"
    mke2fs -q -F -t "$t" -b 1024 -N 16 -L "$t" -U 01234567-89ab-cdef-0123-456789abcdef \
        -E root_owner=0:0 "$ep/$t.img" >/dev/null 2>&1
done

# --- TOML: first byte picks board (0), config (1) or overlay.toml (2) ----------------------
tp=$seeds/toml_files
for b in "$repo"/boards/*.toml; do
    { printf '\000'; cat "$b"; } >"$tp/board-$(basename "$b")"
done
{ printf '\001'; cat "$repo/imgbuild.toml"; } >"$tp/config-imgbuild.toml"
printf '\001board = "rpi4"\nhostname = "gg-1"\n[user]\nname = "admin"\npassword_hash = "$6$s$abc"\nssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn4 me"]\n[boot]\ncmdline_append = ["quiet"]\n[boot.config]\ndtparam = "audio=off"\n[[file]]\npath = "/etc/motd"\ncontent = "hi"\nmode = "0640"\nowner = "root:adm"\n[[template]]\nsource = "issue.tera"\npath = "/etc/issue"\n[systemd]\nenable = ["ssh.service"]\n' >"$tp/config-full.toml"
printf '\001board = "rpi4"\n[greengrass]\nregion = "eu-central-1"\ndata_endpoint = "a1b2c3-ats.iot.eu-central-1.amazonaws.com"\ncredential_endpoint = "c1.credentials.iot.eu-central-1.amazonaws.com"\nrole_alias = "GGTokenExchangeRoleAlias"\nprovisioning_template = "GGFleetProvisioning"\nclaim_cert = "claim.pem.crt"\nclaim_key = "claim.private.pem.key"\nproxy_url = "http://proxy.local:3128"\nmqtt_port = 443\n[greengrass.template_parameters]\nSerial = "x"\n' >"$tp/config-greengrass.toml"
printf '\002["/etc/motd"]\nmode = "0600"\nowner = "1000:1000"\n["/usr/local/bin/tool"]\nmode = "0o4755"\n["/etc/ssh"]\nowner = "root:ssh"\nrecursive = true\n' >"$tp/overlay.toml"

# --- allowlist ----------------------------------------------------------------------------------
printf '# fleet A\n\n  10000000abcdef01  \nSN-2 # spare\r\nthing:name_3\n' >"$seeds/allowlist/list.txt"
printf 'abc\nab c\nabc\n\xc3\xa9t\xc3\xa9\n' >"$seeds/allowlist/bad.txt"

# --- systemd units (first line: unit name) -------------------------------------------------------
up=$seeds/unit_install
printf 'ssh.service\n[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target graphical.target\nRequiredBy=a.target\nAlias=sshd.service\n# WantedBy=no\nAlso=ssh.socket\n' >"$up/ssh"
printf 'getty@tty1.service\n[Install]\n WantedBy = getty.target \n;Alias=x\n[Install]\nAlias=a b\n' >"$up/getty"
printf 'getty@.service\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n' >"$up/template"
printf 'evil.service\n[Install]\nAlias=../../../etc/shadow\nWantedBy=multi-user.target/../../x\n' >"$up/escape"

# --- compressed bases: each supported format, the refused ones' magics, raw ---------------------
dp=$seeds/decompress
head -c 6000 "$repo/README.md" >"$tmp/data"
head -c 8192 /dev/zero >>"$tmp/data"
xz -c -T1 "$tmp/data" >"$dp/data.xz"
{ xz -c "$tmp/data"; xz -c --check=sha256 /dev/null; } >"$dp/two-streams.xz"
gzip -c "$tmp/data" >"$dp/data.gz"
zstd -q -c "$tmp/data" >"$dp/data.zst"
(cd "$tmp" && zip -q -X data.zip data) && mv "$tmp/data.zip" "$dp/data.zip"
printf 'BZh91AY&SY' >"$dp/bzip2"
printf 'QFI\373\000\000\000\003' >"$dp/qcow2"
printf '7z\274\257\047\034\000\004' >"$dp/7z"
printf 'PK\005\006\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' >"$dp/empty.zip"
head -c 4096 "$repo/README.md" >"$dp/raw"
du -sh "$seeds" | sed 's/^/seeds: /'
