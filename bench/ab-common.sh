# Shared by bench/ab.sh and bench/vs-nats.sh (sourced): reading a run's figures out of its
# JSON report, and the table of medians per row and side.

# The figure a row is judged by: records/s of its role, p99 ms, node CPU ms per 1,000.
figures() { # json, role
    jq -r --arg role "$2" '
        [(.median[] | select(.role == $role)) as $m
         | $m.records_per_s, $m.p50_ms, $m.p99_ms,
           (.runs[0].cpu.node_ms_per_1k_records // "-")] | @tsv' "$1"
}

# Medians per row and side, and B / A: medians RUNS_TSV A_NAME B_NAME
medians() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/ab-medians.py" "$1" "$2" "$3"
}
