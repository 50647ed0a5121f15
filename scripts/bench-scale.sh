#!/usr/bin/env bash
# Throughput of the reference job with 1 and 2 executors on this machine (a benchmark, not a
# test): a local tansu broker, EVENTS generated events in 8 partitions, then `weir local
# --trigger available-now` per executor count on fresh tables, release build.
# Reports wall time and rows/s per run, and the per-phase time the executors report.
# Usage: scripts/bench-scale.sh [EVENTS] [EXECUTOR COUNTS...]   (default: 1000000 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
shift || true
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 2)
BENCH=.weir/bench
source scripts/bench-common.sh
bench_setup "$BENCH" ${WEIR_BENCH_PORT:-9093} "$EVENTS"
for n in "${COUNTS[@]}"; do
  run="$BENCH/run-$n"
  mkdir -p "$run"
  sed -e "s#\.weir/demo#$run#g" -e "s#max_offsets_per_trigger: .*#max_offsets_per_trigger: 250000#" \
    examples/reference-local.yaml > "$run/job.yaml"
  start=$(date +%s.%N)
  $WEIR local --job "$run/job.yaml" --executors "$n" --trigger available-now \
    --work-dir "$run/work" > "$run/progress.txt" 2> "$run/weir.log"
  end=$(date +%s.%N)
  python3 - "$run" "$n" "$start" "$end" <<'PY'
import glob, json, os, sys
run, n, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = 0
phases = {"read_ms": 0, "aggregate_ms": 0, "exchange_ms": 0, "emit_ms": 0}
for path in glob.glob(os.path.join(run, "checkpoint", "commits", "*")):
    with open(path) as f:
        record = json.load(f)
    rows += record["stats"]["input_rows"]
    for e in record["executors"].values():
        for k in phases:
            phases[k] += e.get(k, 0)
wall = end - start
spent = ", ".join(f"{k[:-3]} {v / 1000 / n:.1f}s" for k, v in phases.items())
print(f"{n} executor(s): {rows} rows in {wall:.1f} s = {rows / wall:,.0f} rows/s "
      f"(per executor on average: {spent})")
PY
done
