#!/usr/bin/env bash
# imgbuild performance benchmark: one command, run on demand (never from the test suite).
#
#   bash bench/run.sh            # builds the fixture once (cached in $BENCH_DIR), runs every stage
#   STAGES="compress warm" bash bench/run.sh   # only some stages (setup and fixture always run)
#
# Settings (environment): BENCH_DIR (work dir, default /tmp/imgbuild-bench; needs ~6 GiB),
# IMAGE_MIB (default 2048), DATA_MIB (real file data copied into the ext4 partition, default 1300),
# DATA_DIRS (where those files come from, default /usr/share and parts of /usr/lib),
# PRESET (default 6), REBUILD_FIXTURE=1 to rebuild the fixture.
#
# Every stage is a function `stage_NAME`; a stage whose tool is missing prints "skipped" with the
# reason. Each measurement runs under /usr/bin/time -v; results are printed as a Markdown table
# (also saved to $BENCH_DIR/results.md) to be copied into bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/imgbuild-bench}
IMAGE_MIB=${IMAGE_MIB:-2048}
DATA_MIB=${DATA_MIB:-1300}
PRESET=${PRESET:-6}
DATA_DIRS=${DATA_DIRS:-"/usr/share /usr/lib/x86_64-linux-gnu /usr/lib/gcc /usr/lib/jvm /usr/lib/llvm-14"}
STAGES=${STAGES:-"compress warm decompress bmap patch build"}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
XZPACK=$TARGET_DIR/release/examples/xzpack
IMGBUILD=$TARGET_DIR/release/imgbuild
RAW=$BENCH_DIR/disk.img
FAT_START=8192           # sectors, like Raspberry Pi OS
FAT_SECTORS=524288       # 256 MiB
EXT_START=$((FAT_START + FAT_SECTORS))
RESULTS=$BENCH_DIR/results.md

declare -A WALL RSS CPU

log() { printf '== %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
skip() { log "stage $1: skipped ($2)"; printf '| %s | skipped: %s | | | |\n' "$1" "$2" >>"$RESULTS"; }

# measure KEY CMD...: runs CMD under /usr/bin/time -v, records wall seconds and peak RSS (KiB).
measure() {
    local key=$1 tv=$BENCH_DIR/time.$1.txt
    shift
    log "$key: $*"
    /usr/bin/time -v -o "$tv" "$@"
    WALL[$key]=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$tv")
    RSS[$key]=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
    CPU[$key]=$(awk -F': ' '/(User|System) time \(seconds\)/ {s += $2} END {print s}' "$tv")
    printf '| %s | %.2f s | %.2f s | %d MiB | %s |\n' "$key" "${WALL[$key]}" "${CPU[$key]}" \
        "$((RSS[$key] / 1024))" "$*" \
        | sed "s|$BENCH_DIR/||g" >>"$RESULTS"
}

# ratio KEY_A KEY_B: wall(A) / wall(B); cpu_ratio: the same for CPU time (less noisy on a shared
# machine, where other processes stretch wall times unevenly).
ratio() { awk -v a="${WALL[$1]:-0}" -v b="${WALL[$2]:-0}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
cpu_ratio() { awk -v a="${CPU[$1]:-0}" -v b="${CPU[$2]:-0}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
note() { printf '\n%s\n' "$*" >>"$RESULTS"; }

stage_setup() {
    for tool in /usr/bin/time xz sfdisk mkfs.vfat mke2fs e2fsck mcopy cargo; do
        have "$tool" || { echo "missing $tool (apt: time xz-utils fdisk dosfstools e2fsprogs mtools)" >&2; exit 1; }
    done
    mkdir -p "$BENCH_DIR"
    log "building the xzpack example (release)"
    (cd "$ROOT" && cargo build --release -q -p imgbuild-pack --example xzpack)
    {
        echo "# imgbuild benchmark $(date -u +%Y-%m-%dT%H:%MZ)"
        echo
        echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)," \
            "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM," \
            "$(uname -r), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)." \
            "xz: $(xz --version | head -1). Preset $PRESET."
        echo
        echo "| measurement | wall | CPU (user+sys) | peak RSS | command |"
        echo "| --- | --- | --- | --- | --- |"
    } >"$RESULTS"
}

# A tree of real files from this machine (DATA_DIRS), DATA_MIB in total, in a stable order.
make_tree() {
    local tree=$1 list=$BENCH_DIR/files.txt got
    rm -rf "$tree" && mkdir -p "$tree"
    # awk reads everything (no early exit) so that no stage of the pipe dies of SIGPIPE.
    find $DATA_DIRS -xdev -type f -readable -printf '%s\t%p\n' 2>/dev/null | sort -k2 \
        | awk -F'\t' -v budget=$((DATA_MIB * 1048576)) 'sum < budget { sum += $1; print $2 }' >"$list"
    tar -cf - -T "$list" 2>/dev/null | tar -xf - -C "$tree" || true # a few files may vanish meanwhile
    got=$(du -sm "$tree" | cut -f1)
    ((got * 10 >= DATA_MIB * 9)) || { echo "only $got MiB of files copied from $DATA_DIRS" >&2; exit 1; }
}

stage_fixture() {
    if [[ -s $RAW && -z ${REBUILD_FIXTURE:-} ]]; then
        log "fixture: reusing $RAW"
        return
    fi
    local tree=$BENCH_DIR/tree ext_bytes=$((EXT_START * 512))
    log "fixture: copying ${DATA_MIB} MiB of files from /usr"
    make_tree "$tree"
    rm -f "$RAW" && truncate -s "${IMAGE_MIB}M" "$RAW"
    printf 'label: dos\n%s,%s,c\n%s,,83\n' "$FAT_START" "$FAT_SECTORS" "$EXT_START" | sfdisk -q "$RAW"
    mkfs.vfat -F 32 -s 4 -S 512 -n BOOTFS --offset "$FAT_START" "$RAW" $((FAT_SECTORS / 2)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -i "$RAW@@$((FAT_START * 512))" /usr/share/doc/bash ::/ 2>/dev/null || true
    local ext_kib=$(((IMAGE_MIB * 2048 - EXT_START) / 2))
    mke2fs -q -t ext4 -L rootfs -E offset=$ext_bytes -d "$tree" "$RAW" "${ext_kib}k"
    e2fsck -fyD "$RAW?offset=$ext_bytes" >/dev/null || [[ $? -le 1 ]]
    rm -rf "$tree"
    log "fixture: $(du -h --apparent-size "$RAW" | cut -f1) apparent, $(du -h "$RAW" | cut -f1) allocated"
}

stage_compress() {
    rm -rf "$BENCH_DIR/cache"
    measure "xz -T0 -$PRESET" sh -c "xz -T0 -$PRESET -c '$RAW' > '$BENCH_DIR/xz.img.xz'"
    measure "xzpack cold (empty cache)" "$XZPACK" compress "$RAW" "$BENCH_DIR/ours.img.xz" \
        --preset "$PRESET" --cache "$BENCH_DIR/cache"
    local raw_sha ours_sha
    raw_sha=$(sha256sum <"$RAW" | cut -d' ' -f1)
    ours_sha=$(xz -dc "$BENCH_DIR/ours.img.xz" | sha256sum | cut -d' ' -f1)
    [[ $raw_sha == "$ours_sha" ]] || { echo "xzpack output does not decompress to the raw image" >&2; exit 1; }
    note "Cold compression: xzpack takes $(ratio "xzpack cold (empty cache)" "xz -T0 -$PRESET")× the time" \
        "of xz -T0 -$PRESET, i.e. throughput ratio $(ratio "xz -T0 -$PRESET" "xzpack cold (empty cache)")" \
        "(target ≥ 0.95); CPU-time ratio $(cpu_ratio "xz -T0 -$PRESET" "xzpack cold (empty cache)"). Sizes: xz $(mib "$(stat -c%s "$BENCH_DIR/xz.img.xz")") MiB," \
        "xzpack $(mib "$(stat -c%s "$BENCH_DIR/ours.img.xz")") MiB, raw $(mib "$(stat -c%s "$RAW")") MiB." \
        "xzpack output verified: xz -dc | sha256sum equals the raw image."
}

stage_warm() {
    [[ -d $BENCH_DIR/cache ]] || { skip warm "needs the compress stage's cache"; return; }
    measure "xzpack index of base (one-time)" "$XZPACK" index "$RAW" "$BENCH_DIR/index.json"
    # Change one small region inside the ext4 partition: 64 KiB at 1 GiB.
    local offset=$((1024 * 1048576)) len=65536
    head -c $len /dev/urandom | dd of="$RAW" bs=$len seek=$((offset / len)) conv=notrunc status=none
    # The dirty-map run goes first: it is the one that compresses the changed chunk (the pipeline's
    # warm rebuild); the cache-only run after it finds every block cached and measures re-hashing.
    measure "xzpack warm, cache + dirty map" "$XZPACK" compress "$RAW" "$BENCH_DIR/warm2.img.xz" \
        --preset "$PRESET" --cache "$BENCH_DIR/cache" --index "$BENCH_DIR/index.json" --dirty "$offset:$len"
    measure "xzpack warm, cache only (rehash all)" "$XZPACK" compress "$RAW" "$BENCH_DIR/warm1.img.xz" \
        --preset "$PRESET" --cache "$BENCH_DIR/cache"
    cmp -s "$BENCH_DIR/warm1.img.xz" "$BENCH_DIR/warm2.img.xz" \
        || { echo "warm outputs differ between cache-only and dirty-map runs" >&2; exit 1; }
    [[ $(xz -dc "$BENCH_DIR/warm2.img.xz" | sha256sum) == "$(sha256sum <"$RAW")" ]] \
        || { echo "warm output does not decompress to the patched image" >&2; exit 1; }
    note "Warm rebuild after a 64 KiB change (one 16 MiB chunk recompressed): cache + dirty map" \
        "${WALL[xzpack warm, cache + dirty map]} s wall, ${CPU[xzpack warm, cache + dirty map]} s CPU (target ≤ 3 s), $(ratio "xzpack warm, cache + dirty map" \
        "xzpack cold (empty cache)")× the cold time; re-run with the cache only (every chunk re-hashed," \
        "all blocks cached) ${WALL[xzpack warm, cache only (rehash all)]} s. Both outputs identical and" \
        "verified with xz -dc."
}

stage_decompress() {
    [[ -f $BENCH_DIR/ours.img.xz && -f $BENCH_DIR/xz.img.xz ]] || { skip decompress "needs the compress stage"; return; }
    measure "xz -dc (xz -T0 output)" sh -c "xz -dc '$BENCH_DIR/xz.img.xz' > /dev/null"
    measure "xz -dc (xzpack output)" sh -c "xz -dc '$BENCH_DIR/ours.img.xz' > /dev/null"
    measure "xz -T0 -dc (xzpack output)" sh -c "xz -T0 -dc '$BENCH_DIR/ours.img.xz' > /dev/null"
    note "Decompression of the xzpack output by xz -dc: $(ratio "xz -dc (xzpack output)" "xz -dc (xz -T0 output)")×" \
        "the time for xz's own output; with xz -T0 (parallel, uses the sizes in block headers):" \
        "$(ratio "xz -T0 -dc (xzpack output)" "xz -dc (xz -T0 output)")×."
}

stage_bmap() {
    measure "xzpack bmap" "$XZPACK" bmap "$RAW" "$BENCH_DIR/ours.bmap"
    if have bmaptool; then
        measure "bmaptool create" bmaptool create -o "$BENCH_DIR/theirs.bmap" "$RAW"
        cmp -s "$BENCH_DIR/ours.bmap" "$BENCH_DIR/theirs.bmap" && note "bmap: identical to bmaptool create's." \
            || note "bmap: DIFFERS from bmaptool create's."
    else
        skip "bmaptool create" "bmaptool not installed (apt: bmap-tools)"
    fi
}

# Patch stage (30 files + FAT edits) vs debugfs -w + mcopy: added by the lead with the imgbuild CLI.
stage_patch() {
    [[ -x $IMGBUILD ]] || { skip patch "imgbuild binary not built ($IMGBUILD)"; return; }
    skip patch "imgbuild patch-stage benchmark not written yet"
}

# Full build from a cached base to .img.xz vs xz -T0 alone: added by the lead with the imgbuild CLI.
stage_build() {
    [[ -x $IMGBUILD ]] || { skip build "imgbuild binary not built ($IMGBUILD)"; return; }
    skip build "imgbuild full-build benchmark not written yet"
}

main() {
    stage_setup
    stage_fixture
    for s in $STAGES; do
        "stage_$s"
    done
    cat "$RESULTS"
}

main "$@"
