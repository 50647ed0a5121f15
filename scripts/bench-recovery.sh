#!/usr/bin/env bash
# What fault tolerance costs on this machine (a benchmark, not a test), release build:
#  1. checkpoint overhead: the reference job over EVENTS events with 2 executors and
#     PER_EPOCH records per epoch, with state snapshots on and off
#     (WEIR_UNSAFE_NO_STATE_SNAPSHOTS=1), alternating, ROUNDS times each;
#  2. recovery time: the same job; after epoch KILL_AFTER is committed one executor is
#     SIGKILLed (`weir local` starts it again); reported is the time from the kill to the next
#     committed epoch, next to the median time of an epoch without a failure.
# Usage: scripts/bench-recovery.sh [EVENTS] [PER_EPOCH] [ROUNDS]   (default: 1000000 100000 2)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
PER_EPOCH=${2:-100000}
ROUNDS=${3:-2}
KILL_AFTER=3
BENCH=.weir/bench-recovery
source scripts/bench-common.sh
bench_setup "$BENCH" ${WEIR_BENCH_PORT:-9094} "$EVENTS"

job() {
  mkdir -p "$1"
  # The log keeps every decision: the summary reads them all after the run.
  sed -e "s#\.weir/demo#$1#g" -e "s#max_offsets_per_trigger: .*#max_offsets_per_trigger: $PER_EPOCH#" \
    -e "s#checkpoint_retention: [0-9]*#checkpoint_retention: 100000#" \
    examples/reference-local.yaml > "$1/job.yaml"
}

# Prints "<rows> <seconds> <checkpoint ms per executor> <last checkpoint bytes>" of a run.
summary() {
  python3 - "$1" "$2" "$3" <<'PY'
import glob, json, os, sys
run, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = ms = 0
records = []
for path in glob.glob(os.path.join(run, "checkpoint", "commits", "*")):
    with open(path) as f:
        records.append(json.load(f))
records.sort(key=lambda r: r["epoch"])
for r in records:
    rows += r["stats"]["input_rows"]
    ms += sum(e.get("checkpoint_ms", 0) for e in r["executors"].values()) / max(1, len(r["executors"]))
size = records[-1]["stats"].get("checkpoint_bytes", 0) if records else 0
print(rows, f"{end - start:.2f}", int(ms), size)
PY
}

echo "== checkpoint overhead: 2 executors, $PER_EPOCH records per epoch, $ROUNDS rounds"
declare -A total_rows total_secs
for round in $(seq 1 "$ROUNDS"); do
  for mode in on off; do
    run="$BENCH/overhead-$mode-$round"
    job "$run"
    start=$(date +%s.%N)
    if [ "$mode" = off ]; then export WEIR_UNSAFE_NO_STATE_SNAPSHOTS=1; fi
    $WEIR local --job "$run/job.yaml" --executors 2 --trigger available-now \
      --work-dir "$run/work" > "$run/progress.txt" 2> "$run/weir.log"
    unset WEIR_UNSAFE_NO_STATE_SNAPSHOTS
    end=$(date +%s.%N)
    read -r rows secs ckpt_ms size < <(summary "$run" "$start" "$end")
    total_rows[$mode]=$(( ${total_rows[$mode]:-0} + rows ))
    total_secs[$mode]=$(python3 -c "print(${total_secs[$mode]:-0} + $secs)")
    echo "snapshots $mode, round $round: $rows rows in $secs s = $(python3 -c "print(f'{$rows / $secs:,.0f}')") rows/s; snapshot time per executor $ckpt_ms ms; last checkpoint $size bytes"
  done
done
python3 - "${total_rows[on]}" "${total_secs[on]}" "${total_rows[off]}" "${total_secs[off]}" <<'PY'
import sys
on = int(sys.argv[1]) / float(sys.argv[2])
off = int(sys.argv[3]) / float(sys.argv[4])
print(f"throughput with snapshots {on:,.0f} rows/s, without {off:,.0f} rows/s: "
      f"overhead {100 * (1 - on / off):.1f} %")
PY

echo "== recovery: 2 executors, SIGKILL executor-1 after epoch $KILL_AFTER is committed"
run="$BENCH/recovery"
job "$run"
$WEIR local --job "$run/job.yaml" --executors 2 --trigger available-now \
  --work-dir "$run/work" > "$run/progress.txt" 2> "$run/weir.log" &
LOCAL_PID=$!
until grep -q "] epoch $KILL_AFTER " "$run/progress.txt" 2>/dev/null; do
  kill -0 $LOCAL_PID 2>/dev/null || { echo "weir local ended before epoch $KILL_AFTER" >&2; exit 1; }
  sleep 0.01
done
victim=$(pgrep -f -- "--id executor-1" | head -1)
killed_at=$(date +%s.%N)
kill -9 "$victim"
next=$((KILL_AFTER + 1))
until grep -q "] epoch $next " "$run/progress.txt" 2>/dev/null; do
  kill -0 $LOCAL_PID 2>/dev/null || { echo "weir local ended before epoch $next" >&2; exit 1; }
  sleep 0.01
done
recovered_at=$(date +%s.%N)
wait $LOCAL_PID
python3 - "$run" "$killed_at" "$recovered_at" "$next" <<'PY'
import json, os, re, statistics, sys
run, killed, recovered, epoch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
times = [int(m.group(1)) for m in (re.search(r"\| (\d+) ms$", l) for l in open(os.path.join(run, "progress.txt"))) if m]
with open(os.path.join(run, "checkpoint", "commits", str(epoch))) as f:
    record = json.load(f)
restore = max(e.get("restore_ms", 0) for e in record["executors"].values())
print(f"from the kill to epoch {epoch} committed: {recovered - killed:.2f} s; "
      f"an epoch without failure takes {statistics.median(times) / 1000:.2f} s (median of {len(times)}); "
      f"restoring the killed executor's state took {restore} ms "
      f"({record['stats'].get('checkpoint_bytes', 0)} bytes of checkpoint)")
PY
