#!/usr/bin/env bash
# A/B of two psubd builds (or one build under two settings, A_ARGS / B_ARGS) on this machine: the rows run
# alternately, A then B in odd rounds and B then A in even ones, each run on a fresh 3-node
# `psubd dev` cluster, all in one window, so the machine's drift falls on both sides alike.
# Prints, per row, every run's figure for both sides and the ratio of the medians (B / A).
#
# Usage:  bash bench/ab.sh A_PSUBD B_PSUBD [OUT_DIR]
# Env:    ROUNDS (default 3), DURATION (10s), WARMUP (3s),
#         ROWS (default "batch single64 fetch"; also "single1"),
#         BENCH (default: target/release/psubd-bench of this repository),
#         A_NAME / B_NAME (labels; default "A" / "B"),
#         A_ARGS / B_ARGS (extra psubd-bench arguments for that side, e.g. "--dev-auth").
#
# Rows (as in bench-table.sh): batch = 64 producers × 100 records per request;
# single64 = 64 producers × 1 record; single1 = 1 producer × 1 record (latency);
# fetch = 3 offset consumers reading a prefilled log of 1 M records, 1,000 per request.
set -euo pipefail

A_BIN=$(realpath "$1")
B_BIN=$(realpath "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${3:-$PWD/ab-out-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROWS=${ROWS:-"batch single64 fetch"}
BENCH=${BENCH:-$REPO/target/release/psubd-bench}
A_NAME=${A_NAME:-A}
B_NAME=${B_NAME:-B}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

row_args() {
    case $1 in
        batch) echo "--producers 64 --records-per-request 100" ;;
        single64) echo "--producers 64 --records-per-request 1" ;;
        single1) echo "--producers 1 --records-per-request 1" ;;
        fetch) echo "--producers 0 --consumers 3 --from earliest --prefill 1000000 --fetch-max-records 1000" ;;
        *) echo "unknown row $1" >&2; exit 2 ;;
    esac
}

# shellcheck source=bench/ab-common.sh
source "$REPO/bench/ab-common.sh"

run_side() { # row, side, round
    local row=$1 side=$2 round=$3 bin extra name
    if [ "$side" = A ]; then bin=$A_BIN extra=${A_ARGS:-} name=$A_NAME; else bin=$B_BIN extra=${B_ARGS:-} name=$B_NAME; fi
    local json="$OUT/$row-$side-$round.json"
    # shellcheck disable=SC2046,SC2086
    "$BENCH" --dev --psubd "$bin" --runs 1 --duration "$DURATION" --warmup "$WARMUP" \
        $(row_args "$row") $extra --json "$json" >"$OUT/$row-$side-$round.txt" 2>"$OUT/$row-$side-$round.err" \
        || { echo "   $row $name round $round failed (exit $?): see $OUT/$row-$side-$round.err"; return 0; }
    local role=publish
    [ "$row" = fetch ] && role=fetch
    printf '%s\t%s\t%s\t%s\n' "$row" "$name" "$round" "$(figures "$json" "$role")" | tee -a "$OUT/runs.tsv"
}

{
    echo "A ($A_NAME): $A_BIN ${A_ARGS:-}"
    echo "B ($B_NAME): $B_BIN ${B_ARGS:-}"
    echo "cores: $(nproc); load before: $(cat /proc/loadavg)"
} | tee "$OUT/machine.txt"
printf 'row\tside\tround\trecords/s\tp50 ms\tp99 ms\tnode CPU ms/1k\n' | tee "$OUT/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for row in $ROWS; do
        if [ $((round % 2)) = 1 ]; then order="A B"; else order="B A"; fi
        for side in $order; do run_side "$row" "$side" "$round"; done
    done
done
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt"

medians "$OUT/runs.tsv" "$A_NAME" "$B_NAME"
echo "runs in $OUT"
