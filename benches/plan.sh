#!/usr/bin/env bash
# Planning benchmark: read a URL list and cut it into shards (capfilt_coordinator::read_rows and
# shards, through the plan_shards example), for Parquet and JSONL inputs of 1M and 10M rows.
# Prints rows/s and the peak resident memory from /usr/bin/time -v; the peak should not grow
# with the row count.
#
#   CARGO_TARGET_DIR=... cargo build --workspace --examples
#   benches/plan.sh /path/to/plan_shards [WORKDIR]
#
# Each input is written under WORKDIR (default /tmp/capfilt-plan-bench), measured and deleted
# before the next, so the disk contains at most one (the 10M-row JSONL, about 2 GB).
set -euo pipefail

bin=${1:?usage: benches/plan.sh PLAN_SHARDS [WORKDIR]}
work=${2:-/tmp/capfilt-plan-bench}
here=$(cd "$(dirname "$0")" && pwd)
trap 'rm -rf "$work"' EXIT

echo "nproc: $(nproc)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '%-8s %-9s %10s %12s %10s %14s\n' format rows file_MB seconds rows/s peak_rss_MiB
for rows in 1000000 10000000; do
    for format in parquet jsonl; do
        # One input at a time keeps the disk use to the largest file (about 2 GB).
        input="$work/rows-$rows.$format"
        python3 "$here/make_plan_inputs.py" --rows "$rows" --format "$format" --out "$input"
        size_mb=$(( $(stat -c %s "$input") / 1000000 ))
        # Read once untimed so every input starts from a warm page cache.
        cat "$input" > /dev/null
        report=$(/usr/bin/time -v -o "$work/time.txt" "$bin" "$input")
        peak_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
        python3 - "$report" "$peak_kib" "$format" "$size_mb" <<'PY'
import json, sys
report, peak_kib, fmt, size_mb = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"{fmt:8} {report['rows']:9d} {size_mb:>10} {report['seconds']:12.2f} {report['rows_per_s']:10.0f} {peak_kib / 1024:14.1f}")
PY
        rm -f "$input"
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
