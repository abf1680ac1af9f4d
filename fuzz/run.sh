#!/usr/bin/env bash
# Runs imgbuild's fuzz campaign: each target for SECONDS (default 600), one at a time, under
# nice, then rewrites the results table of fuzz/README.md. Not part of CI.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # default: every target of `cargo fuzz list`
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`), plus the Debian tools
# seeds.sh uses. Per target it keeps: corpus/TARGET (grows across runs; seeds/TARGET is read
# too), artifacts/TARGET (crash-*, oom-*, timeout-*, leak-* inputs), logs/TARGET.log, and
# results/TARGET.tsv (the numbers of the last run, committed with the README).
set -euo pipefail
secs=${1:-600}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

[ -d seeds ] || ./seeds.sh
mkdir -p corpus artifacts logs results
nice -n 19 cargo +nightly fuzz build -O -a >/dev/null

# Scratch files of the targets (they take paths) go to a tmpfs directory removed at the end.
scratch=$(mktemp -d "${SCRATCH_ROOT:-/dev/shm}/imgbuild-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# Longest input per target: disk images need room for a table plus a small file system.
max_len() {
    case $1 in
        partition_table) echo 196608 ;;
        fat_probe) echo 65536 ;;
        ext4_probe) echo 131072 ;;
        decompress) echo 16384 ;;
        *) echo 8192 ;;
    esac
}

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    rm -f "artifacts/$t"/*
    dict=()
    [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    seed_dirs=()
    [ -d "seeds/$t" ] && seed_dirs=("seeds/$t")
    echo "== $t: ${secs}s" >&2
    start=$(date +%s)
    set +e
    TMPDIR=$scratch nice -n 19 cargo +nightly fuzz run -O -a "$t" "corpus/$t" "${seed_dirs[@]}" -- \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dict[@]}" \
        >"logs/$t.log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    # The last status line (`#N ... cov: C ft: F corp: K/...`) holds the final coverage.
    last=$(grep -E '^#[0-9]+.*cov: ' "logs/$t.log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "artifacts/$t" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(date -u +%F)" "$elapsed" \
        "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "$rc" >"results/$t.tsv"
    echo "== $t: rc=$rc execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} artifacts=$crashes" >&2
done

# Rewrite the table between the markers of README.md from every results/*.tsv (runs of other
# invocations included), under a lock so two concurrent lanes do not interleave.
(
    flock 9
    table=$(mktemp)
    {
        echo "| target | date | seconds | executions | coverage (edges) | features | corpus | crashes | exit |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        cat results/*.tsv | sort | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6,$7,$8,$9}'
    } >"$table"
    awk -v table="$table" '
        /<!-- results:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- results:end -->/ { skip = 0 }
        !skip { print }
    ' README.md >README.md.new
    mv README.md.new README.md
    rm -f "$table"
) 9>results/.lock
