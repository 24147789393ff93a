#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram between two scrapes (files), from the bucket deltas.

    histogram.py BEFORE AFTER METRIC 'label="value"' [quantiles...]

Prints mean and each quantile as the upper bound of the bucket it falls in (so "<= 50 us").
"""
import sys


def buckets(path, metric, label):
    out, total, count = {}, 0.0, 0.0
    for line in open(path):
        if not line.startswith(metric) or label not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith(metric + "_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(value)
        elif name.startswith(metric + "_sum"):
            total = float(value)
        elif name.startswith(metric + "_count"):
            count = float(value)
    return out, total, count


before, after, metric, label = sys.argv[1:5]
quantiles = [float(q) for q in sys.argv[5:]] or [0.5, 0.99]
b, b_sum, b_count = buckets(before, metric, label)
a, a_sum, a_count = buckets(after, metric, label)
n = a_count - b_count
if n <= 0:
    print(f"{metric}: no observations")
    sys.exit(0)
parts = [f"mean {(a_sum - b_sum) / n * 1e6:.0f} us over {n:.0f}"]
for q in quantiles:
    for le in sorted(a):
        if a[le] - b.get(le, 0.0) >= q * n:
            bound = "inf" if le == float("inf") else f"{le * 1e6:.0f} us"
            parts.append(f"p{q * 100:g} <= {bound}")
            break
print(f"{metric}{{{label}}}: " + ", ".join(parts))
