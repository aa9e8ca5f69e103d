"""Medians per row and side of an A/B run table (runs.tsv of bench/ab.sh or bench/vs-nats.sh),
and the ratio B / A.

Usage: python3 bench/ab-medians.py RUNS_TSV A_NAME B_NAME
"""
import csv, statistics, sys
path, a, b = sys.argv[1:4]
rows = {}
with open(path) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        rows.setdefault(r["row"], {}).setdefault(r["side"], []).append(r)
cols = ["records/s", "p50 ms", "p99 ms", "node CPU ms/1k"]
print(f"\nrow\tfigure\t{a} (runs)\t{b} (runs)\tmedian {b} / {a}")
for row, sides in rows.items():
    for col in cols:
        vals = {s: [float(r[col]) for r in sides.get(s, []) if r[col] not in ("", "-")] for s in (a, b)}
        if not vals[a] or not vals[b]:
            continue
        ma, mb = statistics.median(vals[a]), statistics.median(vals[b])
        fmt = lambda v: ", ".join(f"{x:,.2f}" if x < 100 else f"{x:,.0f}" for x in v)
        ratio = f"{mb / ma:.2f}" if ma else "-"
        spread = lambda v: f"{(max(v) - min(v)) / statistics.median(v) * 100:.0f} %" if statistics.median(v) else "-"
        print(f"{row}\t{col}\t{fmt(vals[a])} (spread {spread(vals[a])})\t{fmt(vals[b])} (spread {spread(vals[b])})\t{ratio}")
