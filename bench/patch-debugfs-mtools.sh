#!/usr/bin/env bash
# The benchmark's patch stage done with the standard tools, for comparison with imgbuild's:
# debugfs -w (mkdir, write, then set_inode_field for mode/uid/gid, which `write` does not set)
# and mtools (mtype, edit, mcopy) on a copy of the base.
#
#   patch-debugfs-mtools.sh IMAGE PROJECT FAT_OFFSET_BYTES EXT_OFFSET_BYTES
#
# PROJECT is the bench project made by bench/run.sh (files/ and files.txt: NAME DEST MODE UID).
set -euo pipefail
img=$1 proj=$2 fat_off=$3 ext_off=$4
fat="$img@@$fat_off"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
script=$work/debugfs.cmds
for d in /opt /opt/bench /opt/bench/d0 /opt/bench/d1 /opt/bench/d2 /opt/bench/d3; do
    echo "mkdir $d"
done >"$script"
while read -r name dest mode uid; do
    case $dest in
    /boot/firmware/*) continue ;;
    esac
    echo "write $proj/files/$name $dest"
    printf 'sif %s mode 0x%x\n' "$dest" $((8#100$mode))
    echo "sif $dest uid $uid"
    echo "sif $dest gid $uid"
done <"$proj/files.txt" >>"$script"
debugfs -w -f "$script" "$img?offset=$ext_off" >/dev/null 2>&1
export MTOOLS_SKIP_CHECK=1
mtype -i "$fat" ::/cmdline.txt | tr -d '\n' >"$work/cmdline.txt"
printf ' cgroup_enable=memory cgroup_memory=1\n' >>"$work/cmdline.txt"
{ mtype -i "$fat" ::/config.txt; echo "enable_uart=1"; } >"$work/config.txt"
mcopy -o -i "$fat" "$work/cmdline.txt" "$work/config.txt" ::/
mmd -i "$fat" ::/bench
mcopy -i "$fat" "$proj/files/f28.bin" "$proj/files/f29.bin" ::/bench/
