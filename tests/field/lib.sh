# shellcheck shell=bash
# Helpers of the QEMU field test (sourced by tests/field/run.sh): checks and their tally, QEMU boots
# bounded by timeout and ended by PID, and read-back of a disk image with debugfs / mtools.

PASSED=0
FAILED=0
T0=$(date +%s)

# note MESSAGE: progress line with the elapsed time.
note() {
    echo "=== [$(($(date +%s) - T0))s] $*"
}

# pass NAME / fail NAME [DETAIL]: record one check.
pass() {
    PASSED=$((PASSED + 1))
    echo "ok - $1"
}
fail() {
    FAILED=$((FAILED + 1))
    echo "not ok - $1${2:+ ($2)}"
}

# check NAME COMMAND...: pass when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# check_not NAME COMMAND...: pass when COMMAND fails.
check_not() {
    local name=$1
    shift
    if "$@"; then fail "$name"; else pass "$name"; fi
}

# check_eq NAME ACTUAL EXPECTED
check_eq() {
    if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1" "got '$2', expected '$3'"; fi
}

# ---------------------------------------------------------------- host setup

# register_binfmt: qemu-user for arm64 binaries (mmdebstrap's chroot needs it). Root only.
register_binfmt() {
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] ||
        grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
    arch-test arm64 >/dev/null
}

# ---------------------------------------------------------------- image read-back

# part_offset IMG N: byte offset of partition N of IMG.
part_offset() {
    local start
    start=$(sfdisk -J "$1" | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; print(t["partitions"][int(sys.argv[1])-1]["start"] * t.get("sectorsize", 512))' "$2")
    echo "$start"
}

# rootfs_spec IMG: the e2fsprogs "image?offset=N" name of the root file system (partition 2).
rootfs_spec() {
    echo "$1?offset=$(part_offset "$1" 2)"
}

# img_cat IMG PATH: contents of PATH in the root file system (empty when missing).
img_cat() {
    debugfs -R "cat $2" "$(rootfs_spec "$1")" 2>/dev/null
}

# img_exists IMG PATH: true when PATH exists in the root file system (a symlink counts).
img_exists() {
    debugfs -R "stat $2" "$(rootfs_spec "$1")" 2>&1 | grep -q '^Inode:'
}

# img_fat_cat IMG NAME: a file of the FAT partition (partition 1).
img_fat_cat() {
    MTOOLS_SKIP_CHECK=1 mtype -i "$1@@$(part_offset "$1" 1)" "::/$2"
}

# img_journal IMG DIR: copy /var/log/journal of the image into DIR (for journalctl -D).
img_journal() {
    rm -rf "$2"
    mkdir -p "$2"
    debugfs -R "rdump /var/log/journal $2" "$(rootfs_spec "$1")" >/dev/null 2>&1
}

# dpkg_installed IMG PACKAGE: true when the image's dpkg status has PACKAGE "install ok installed".
dpkg_installed() {
    img_cat "$1" /var/lib/dpkg/status | awk -v p="$2" '
        /^Package: / { cur = $2 }
        /^Status: / && cur == p && $0 == "Status: install ok installed" { found = 1 }
        END { exit !found }'
}

# shadow_locked IMG USER: true when USER's shadow password field starts with ! or * (no password login).
shadow_locked() {
    local field
    field=$(img_cat "$1" /etc/shadow | awk -F: -v u="$2" '$1 == u { print $2; found = 1 } END { exit !found }') ||
        return 1
    [[ $field == '!'* || $field == '*'* ]]
}

# fs_clean IMG: e2fsck -fn finds nothing to fix in the root file system.
fs_clean() {
    e2fsck -fn "$(rootfs_spec "$1")" >/dev/null 2>&1
}

# ---------------------------------------------------------------- boots

QEMU_PID=
# boot NAME LOG TIMEOUT QEMU-ARGS...: run QEMU (whose args send the console to LOG) under `timeout`,
# wait for it and report its wall time. The PID is kept in QEMU_PID so the EXIT trap can end a stray QEMU.
boot() {
    local name=$1 log=$2 limit=$3 start rc=0
    shift 3
    : >"$log"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>"$log.stderr" &
    QEMU_PID=$!
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=
    note "boot $name: qemu exit $rc after $(($(date +%s) - start))s (limit ${limit}s)"
    if ((rc != 0)); then
        echo "--- last console lines of $name:"
        tail -n 30 "$log"
        cat "$log.stderr"
    fi
    return "$rc"
}

# stop_qemu: end a QEMU (its timeout wrapper) still running, by PID.
stop_qemu() {
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=
}

# console_count LOG PATTERN: number of console lines matching the extended regex PATTERN (colours removed).
console_count() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -caE "$2" || true
}
