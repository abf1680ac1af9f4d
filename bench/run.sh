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
    for tool in /usr/bin/time xz zstd sfdisk mkfs.vfat mke2fs e2fsck mcopy cargo; do
        have "$tool" || { echo "missing $tool (apt: time xz-utils zstd fdisk dosfstools e2fsprogs mtools)" >&2; exit 1; }
    done
    mkdir -p "$BENCH_DIR"
    log "building the xzpack example and imgbuild (release; imgbuild without the AWS side, unused here)"
    (cd "$ROOT" && cargo build --release -q -p imgbuild-pack --example xzpack &&
        cargo build --release -q -p imgbuild --no-default-features)
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
    note "Warm rebuild after a 64 KiB change (one chunk recompressed): cache + dirty map" \
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

# The bench project: 28 files for the ext4 root (4 KiB-2 MiB, ~10 MiB, numeric owners and modes)
# and 2 for the FAT partition as [[file]] entries, plus a cmdline.txt and a config.txt edit; the
# base is the fixture with a cmdline.txt and config.txt on its FAT partition.
prepare_project() {
    local proj=$BENCH_DIR/project
    rm -rf "$proj" && mkdir -p "$proj/files"
    python3 - "$proj" <<'PY'
import random, sys, os
proj = sys.argv[1]
rng = random.Random(42)
sizes = [4096 * (1 << (i % 10)) for i in range(30)]
with open(os.path.join(proj, "imgbuild.toml"), "w") as cfg, open(os.path.join(proj, "files.txt"), "w") as lst:
    cfg.write('[boot]\ncmdline_append = ["cgroup_enable=memory", "cgroup_memory=1"]\n[boot.config]\nenable_uart = "1"\n')
    for i, size in enumerate(sizes):
        name = f"f{i:02}.bin"
        with open(os.path.join(proj, "files", name), "wb") as f:
            # half random, half text: like configs and binaries
            f.write(rng.randbytes(size // 2) + (b"bench line %d\n" % i) * (size // 2 // 14 + 1))
        dest = f"/boot/firmware/bench/{name}" if i >= 28 else f"/opt/bench/d{i % 4}/{name}"
        mode, uid = ("0755", 1000) if i % 3 == 0 else ("0644", 0)
        cfg.write(f'[[file]]\npath = "{dest}"\nsource = "files/{name}"\nmode = "{mode}"\nowner = "{uid}:{uid}"\n')
        lst.write(f"{name} {dest} {mode} {uid}\n")
PY
    cp --sparse=always "$RAW" "$BENCH_DIR/base.img"
    printf 'console=serial0,115200 root=LABEL=rootfs rootwait\n' >"$BENCH_DIR/cmdline.txt"
    printf '[all]\narm_64bit=1\n' >"$BENCH_DIR/config.txt"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$BENCH_DIR/base.img@@$((FAT_START * 512))" \
        "$BENCH_DIR/cmdline.txt" "$BENCH_DIR/config.txt" ::/
    # Base images come compressed: imgbuild decompresses one into its cache on the first build
    # and copies that raw image on later ones (zstd here only because it compresses in seconds).
    zstd -q -T0 -3 -f "$BENCH_DIR/base.img" -o "$BENCH_DIR/base.img.zst"
}

# imgbuild run in the bench project: imgbuild_run KEY OUTDIR [ARGS...]; the per-stage times it
# logs with -v land in $BENCH_DIR/KEY.log. SOURCE_DATE_EPOCH is fixed, as for reproducible builds
# (without it every build stamps "now" into every inode it writes, and more chunks change).
imgbuild_run() {
    local key=$1 out=$2
    shift 2
    measure "$key" sh -c "cd '$BENCH_DIR/project' && SOURCE_DATE_EPOCH=1700000000 '$IMGBUILD' -v --board rpi4 --base '$BENCH_DIR/base.img.zst' \
        --out '$out' --name bench --cache-dir '$BENCH_DIR/imgbuild-cache' $* 2>'$BENCH_DIR/$key.log'"
}

# stage_seconds KEY STAGE: the seconds imgbuild logged for STAGE in run KEY.
stage_seconds() {
    sed 's/\x1b\[[0-9;]*m//g' "$BENCH_DIR/$1.log" | awk -v st="stage=\"$2\"" '
        index($0, "stage done") && index($0, st) { for (i = 1; i <= NF; i++) if ($i ~ /^seconds=/) { sub("seconds=", "", $i); print $i } }' | tail -1
}

# Patch stage: imgbuild's own patch time (files + FAT edits, from its -v log) against debugfs -w +
# mtools doing the same on a copy of the base; plus imgbuild's working copy against cp --sparse.
stage_patch() {
    [[ -x $IMGBUILD ]] || { skip patch "imgbuild binary not built ($IMGBUILD)"; return; }
    have debugfs && have mtype || { skip patch "debugfs/mtools missing"; return; }
    prepare_project
    rm -rf "$BENCH_DIR/out-raw"
    imgbuild_run "imgbuild --compress none" "$BENCH_DIR/out-raw" --compress none
    measure "cp --sparse=always (working copy)" cp --sparse=always "$BENCH_DIR/base.img" "$BENCH_DIR/theirs.img"
    measure "debugfs -w + mtools (same 30 files + FAT edits)" bash "$ROOT/bench/patch-debugfs-mtools.sh" \
        "$BENCH_DIR/theirs.img" "$BENCH_DIR/project" $((FAT_START * 512)) $((EXT_START * 512))
    e2fsck -fn "$BENCH_DIR/out-raw/bench.img?offset=$((EXT_START * 512))" >/dev/null 2>&1 \
        || { echo "imgbuild's output is not e2fsck-clean" >&2; exit 1; }
    local ours copy
    ours=$(stage_seconds "imgbuild --compress none" patch)
    copy=$(stage_seconds "imgbuild --compress none" "working copy")
    WALL[imgbuild patch stage]=$ours
    WALL[imgbuild working copy]=$copy
    note "Patch stage (28 ext4 files with modes/owners, 2 FAT files, cmdline.txt + config.txt edits):" \
        "imgbuild ${ours} s (its own stage timer) vs debugfs -w + mtools" \
        "${WALL[debugfs -w + mtools (same 30 files + FAT edits)]} s: ratio" \
        "$(ratio "imgbuild patch stage" "debugfs -w + mtools (same 30 files + FAT edits)")× (target ≤ 1.0)." \
        "Working copy of the 2 GiB base: imgbuild ${copy} s vs cp --sparse=always" \
        "${WALL[cp --sparse=always (working copy)]} s: $(ratio "imgbuild working copy" "cp --sparse=always (working copy)")×." \
        "Whole raw build (copy, hash, patch, bmap, sha256): ${WALL[imgbuild --compress none]} s."
}

# Full build from the base to .img.xz (empty chunk cache) vs xz -T0 compressing the raw image
# alone; then the warm rebuild after changing one file vs that first build.
stage_build() {
    [[ -x $IMGBUILD ]] || { skip build "imgbuild binary not built ($IMGBUILD)"; return; }
    [[ -f $BENCH_DIR/project/imgbuild.toml ]] || prepare_project
    rm -rf "$BENCH_DIR/imgbuild-cache" "$BENCH_DIR/out-xz"
    [[ -n ${WALL[xz -T0 -$PRESET]:-} ]] \
        || measure "xz -T0 -$PRESET" sh -c "xz -T0 -$PRESET -c '$RAW' > '$BENCH_DIR/xz.img.xz'"
    imgbuild_run "imgbuild full build (cold)" "$BENCH_DIR/out-xz" --xz-level "$PRESET"
    local first
    first=$(sha256sum <"$BENCH_DIR/out-xz/bench.img.xz")
    # change one file of the project and rebuild with the chunk cache of the first build
    printf 'changed %s\n' "$(date +%s%N)" >>"$BENCH_DIR/project/files/f05.bin"
    # Extra disk of the warm rebuild: the peak allocated size of its overlay file (the
    # copy-on-write layer; a working copy when the build cannot use one), sampled every 20 ms.
    # `|| true`: under `set -e` a sample taken before the scratch dir exists must not end the loop.
    local peak_file=$BENCH_DIR/scratch-peak
    echo 0 >"$peak_file"
    (
        peak=0
        while :; do
            used=$(find "$BENCH_DIR/out-xz/.imgbuild-scratch" \( -name overlay.img -o -name work.img \) \
                -printf '%b\n' 2>/dev/null | awk '{s += $1 * 512} END {print s + 0}' || true)
            if [[ -n $used && $used -gt $peak ]]; then peak=$used; echo "$peak" >"$peak_file"; fi
            sleep 0.02
        done
    ) &
    local sampler=$!
    imgbuild_run "imgbuild warm rebuild (1 file changed)" "$BENCH_DIR/out-xz" --xz-level "$PRESET"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local written
    written=$(sed 's/\x1b\[[0-9;]*m//g' "$BENCH_DIR/imgbuild warm rebuild (1 file changed).log" \
        | grep -o 'overlay_written_bytes=[0-9]*' | tail -1 | cut -d= -f2)
    note "Extra disk of the warm rebuild: overlay peak $(mib "$(cat "$peak_file")") MiB allocated" \
        "for $(mib "${written:-0}") MiB written through it (target: ≤ 2× the bytes written)."
    [[ $(sha256sum <"$BENCH_DIR/out-xz/bench.img.xz") != "$first" ]] \
        || { echo "the warm rebuild did not change the image" >&2; exit 1; }
    xz -t "$BENCH_DIR/out-xz/bench.img.xz"
    local k
    for k in "working copy" patch bmap compress; do
        note "- warm rebuild, stage $k: $(stage_seconds "imgbuild warm rebuild (1 file changed)" "$k") s" \
            "(cold: $(stage_seconds "imgbuild full build (cold)" "$k") s)"
    done
    note "Full build from the base to .img.xz: $(ratio "imgbuild full build (cold)" "xz -T0 -$PRESET")× the wall" \
        "time of xz -T0 -$PRESET alone on the raw image (CPU $(cpu_ratio "imgbuild full build (cold)" "xz -T0 -$PRESET")×)." \
        "Warm rebuild after changing one file: ${WALL[imgbuild warm rebuild (1 file changed)]} s wall" \
        "(target ≤ 3 s), $(ratio "imgbuild warm rebuild (1 file changed)" "imgbuild full build (cold)")× the first build."
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
