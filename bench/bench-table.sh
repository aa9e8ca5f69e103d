#!/usr/bin/env bash
# Runs every row of the benchmark table (docs/benchmarks.md) with `psubd-bench`, one after another, and
# keeps each row's printed table (.txt), its progress log (.err) and its JSON report
# (.json: machine, disk, git commit, parameters, every run, medians).
#
# Usage:  bash bench/bench-table.sh [OUT_DIR]      (default: ./bench-out-<time>)
# Env:    REPO (default: this repository), DURATION (default 30s), WARMUP (default 5s),
#         RUNS (default 3), SKIP_BUILD=1 to use the existing target/release/psubd and psubd-bench,
#         ONLY="batch single64 ..." to run a subset of the rows.
#
# Every row starts its own fresh 3-node cluster (`--dev`: RF 3, fsync before ack,
# acks=all unless the row says otherwise) in a temporary data dir on the same disk.
# Medians of RUNS runs are printed at the bottom of each .txt (and are `median` in the
# JSON). The 10 M records row is one fresh cluster whose log grows from 0 (its rate by
# tenth of the window is the figure). Total time: ~30 min with the defaults, ~14 min with
# DURATION=10s WARMUP=3s.
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
RUNS=${RUNS:-3}
OUT=${1:-$PWD/bench-out-$(date +%Y%m%d-%H%M%S)}
ONLY=${ONLY:-"batch single64 single1 fetch group v1k v16k p1 p12 growth"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cd "$REPO" # the report's git commit is the repository's HEAD (and whether it is dirty)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -p psubd -p psubd-bench
fi
# Keep copies, side by side (psubd-bench --dev starts the psubd beside it): the shared
# target dir may be rebuilt while the table runs.
cp "$REPO/target/release/psubd" "$REPO/target/release/psubd-bench" "$OUT/"
BENCH="$OUT/psubd-bench"

COMMON=(--dev --runs "$RUNS" --duration "$DURATION" --warmup "$WARMUP")
{
    echo "commit: $(git rev-parse HEAD) $(git status --porcelain --untracked-files=no | grep -q . && echo dirty || echo clean)"
    echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
    echo "disk: $(df -h "${TMPDIR:-/tmp}" | tail -1)"
    echo "load before: $(cat /proc/loadavg)"
} > "$OUT/machine.txt"

want() { [[ " $ONLY " == *" $1 "* ]]; }

row() { # name, then bench arguments
    local name=$1
    shift
    echo "== $name: psubd-bench ${COMMON[*]} $*" | tee -a "$OUT/commands.txt"
    "$BENCH" "${COMMON[@]}" "$@" --json "$OUT/$name.json" \
        >"$OUT/$name.txt" 2>"$OUT/$name.err" || echo "   (exit $? — see $OUT/$name.err)"
    grep -E "median|RSS|CPU" "$OUT/$name.txt" || true
}

# 1. Batch publish, 100 records per request, 64 connections (also: RSS per node, CPU/record).
want batch && row batch --producers 64 --records-per-request 100
# 2. Single-record publish, 64 requests in flight.
want single64 && row single64 --producers 64 --records-per-request 1
# 3. Single-record publish, 1 in flight (latency p50/p99).
want single1 && row single1 --producers 1 --records-per-request 1
# 4. Fetch by offset, 1,000 records per request: 3 consumers (one per partition) read a
#    prefilled log from the start; no producers.
want fetch && row fetch --producers 0 --consumers 3 --from earliest --prefill 3000000 \
    --fetch-max-records 1000
# 5. Publish -> group consumer at half the peak rate, end-to-end p99: the peak is row 1's
#    median (or PEAK=<records/s> if row 1 was not run).
if want group; then
    PEAK=${PEAK:-$(jq -r '[.median[] | select(.role=="publish")][0].records_per_s // empty' "$OUT/batch.json" 2>/dev/null || true)}
    PEAK=${PEAK:-100000}
    HALF=$(printf '%.0f' "$(echo "$PEAK / 2" | bc -l)")
    row group --producers 64 --records-per-request 100 --rate "$HALF" --group-consumers 3
fi
# 6. Value sizes: 1 KiB (100 per request = 100 KiB) and 16 KiB (10 per request = 160 KiB;
#    at 100 per request each 1.6 MB request is an entry of its own and sled writes it as a
#    blob file: ~1,600 records/s, p50 3.4 s in a 5 s trial — worth a line in the README).
want v1k && row v1k --producers 64 --records-per-request 100 --record-size 1024
want v16k && row v16k --producers 64 --records-per-request 10 --record-size 16384
# 7. Partitions: 1 vs 12.
want p1 && row p1 --producers 64 --records-per-request 100 --partitions 1
want p12 && row p12 --producers 64 --records-per-request 100 --partitions 12
# 8. The stored log grows from 0 to 10 million records: the window ends at 10 M acknowledged
#    records; "publish rate by tenth of the window" shows the rate as the log grows. A
#    fresh cluster, so that the run starts from an empty log.
if want growth; then
    for i in 1; do
        echo "== growth-$i: psubd-bench --dev --runs 1 --duration 900s --warmup 0s --max-records 10000000 --producers 64 --records-per-request 100" | tee -a "$OUT/commands.txt"
        "$BENCH" --dev --runs 1 --duration 900s --warmup 0s --max-records 10000000 \
            --producers 64 --records-per-request 100 --json "$OUT/growth-$i.json" \
            >"$OUT/growth-$i.txt" 2>"$OUT/growth-$i.err" || echo "   (exit $?)"
        grep -E "publish|tenth|RSS|CPU" "$OUT/growth-$i.txt" || true
    done
fi
echo "load after: $(cat /proc/loadavg)" >> "$OUT/machine.txt"
echo "results in $OUT"
