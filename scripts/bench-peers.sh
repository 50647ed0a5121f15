#!/usr/bin/env bash
# weir beside Spark Structured Streaming and Apache Flink on the same files and the same query,
# one after the other in one run (a benchmark, not a test), release build:
#  1. `weir gen` writes EVENTS reference events of USERS users over one hour into FILES
#     JSON-lines files (seed 1);
#  2. Spark (PyPI pyspark SPARK_VERSION in a virtualenv, Debian's OpenJDK), local[2], runs the
#     reference query with approx_count_distinct for both distincts (Spark rejects exact
#     distinct in a stream) into Parquet, with Trigger.AvailableNow, once at each
#     maxFilesPerTrigger of SPARK_CAPS (0: every file in one batch);
#  3. Flink (PyPI apache-flink FLINK_VERSION in the same virtualenv), parallelism 2, streaming
#     mode, runs the query with the exact count(DISTINCT user_id) (Flink's streaming SQL has no
#     approximate distinct, so approx_count_distinct(event_id) is left out), once with its
#     defaults and once with the aggregation settings its documentation gives; its file
#     source hands files out in no set order, so its watermark waits 70 minutes instead of
#     10 (the input's hour and the query's delay): no event is late;
#  4. weir, 2 executors, PER_EPOCH files an epoch, into Delta: the same approximate query,
#     then the reference (exact-distinct) query, ROUNDS rounds each, the median round counted.
# Each figure is input rows over the engine's own time: Spark's from its first batch's start
# to the end of its last batch (its progress reports), Flink's its job's net runtime (its
# execution result: deployment in the local cluster included, JVM start and planning not),
# weir's from its first plan to its last decision; none counts process start. weir's
# approximate job is compared with Spark's best setting, its exact job with Spark's and with
# Flink's best.
# Usage: scripts/bench-peers.sh [EVENTS] [USERS]   (default: 2000000 100000)
# Environment: FILES (40), PER_EPOCH (4), SPARK_CAPS ("4 10 0"), ROUNDS (3),
# WEIR_PEERS_VENV (~/.cache/weir/peers-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-2000000}
USERS=${2:-100000}
FILES=${FILES:-40}
PER_EPOCH=${PER_EPOCH:-4}
SPARK_CAPS=${SPARK_CAPS:-"$PER_EPOCH 10 0"}
ROUNDS=${ROUNDS:-3}
SPARK_VERSION=4.3.0
FLINK_VERSION=2.3.0
VENV=${WEIR_PEERS_VENV:-$HOME/.cache/weir/peers-venv}
DIR="$(pwd)/.weir/bench-peers"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# Spark 4 runs on Java 17 or later: Debian's default JRE is 17 on bookworm, 21 on trixie.
java_major() { java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]}'; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
  echo "bench-peers: installing Debian's default JRE"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq default-jre-headless >/dev/null
fi
if ! "$VENV/bin/python" -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$SPARK_VERSION')" 2>/dev/null; then
  echo "bench-peers: installing pyspark $SPARK_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "pyspark==$SPARK_VERSION"
fi
if ! "$VENV/bin/python" -c "import pyflink.version as v, sys; sys.exit(v.__version__ != '$FLINK_VERSION')" 2>/dev/null; then
  echo "bench-peers: installing apache-flink $FLINK_VERSION into $VENV"
  "$VENV/bin/pip" install -q "apache-flink==$FLINK_VERSION"
fi
source scripts/bench-common.sh
bench_build

rm -rf "$DIR"
mkdir -p "$DIR"
echo "bench-peers: generating $EVENTS events of $USERS users into $FILES files"
$WEIR gen --out-dir "$DIR/events" --files "$FILES" --count "$EVENTS" --users "$USERS" \
  --start 2026-01-01T00:00:00Z --span 1h --seed 1 >/dev/null
HARDWARE="$(bench_hardware)"

# Adds the JSON object $1's fields to the JSON line on stdin: which peer and settings it was.
tag() {
  python3 -c "import json, sys; r = json.loads(sys.stdin.read()); r.update(json.loads(sys.argv[1])); print(json.dumps(r))" "$1"
}

RESULTS="$DIR/results.jsonl"
: > "$RESULTS"
for cap in $SPARK_CAPS; do
  echo "bench-peers: Spark, maxFilesPerTrigger $cap"
  "$VENV/bin/python" scripts/bench_peers_spark.py --input "$DIR/events" \
    --work-dir "$DIR/spark-$cap" --max-files-per-trigger "$cap" 2>"$DIR/spark-$cap.log" \
    | tag "{\"peer\": \"spark\", \"cap\": $cap}" >> "$RESULTS"
done
for tuned in "" --tuned; do
  echo "bench-peers: Flink${tuned:+, tuned}"
  "$VENV/bin/python" scripts/bench_peers_flink.py --input "$DIR/events" --parallelism 2 \
    --watermark-delay-minutes 70 $tuned 2>"$DIR/flink${tuned:+-tuned}.log" \
    | tag '{"peer": "flink"}' >> "$RESULTS"
done
for distinct in approx exact; do
  for round in $(seq "$ROUNDS"); do
    echo "bench-peers: weir, $distinct distinct, round $round of $ROUNDS"
    $WEIR bench-run --input "$DIR/events" --distinct "$distinct" --executors 2 \
      --files-per-epoch "$PER_EPOCH" --work-dir "$DIR/weir" \
      | tag "{\"peer\": \"weir\", \"distinct\": \"$distinct\"}" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$EVENTS" "$USERS" "$FILES" "$PER_EPOCH" "$HARDWARE" <<'PY' | tee "$DIR/report.md"
import json, statistics, sys
path, events, users, files, per_epoch, hardware = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]
for r in runs:
    if r["events"] != int(events):
        sys.exit(f"a run read {r['events']} of the {events} events: {r}")
spark = [r for r in runs if r["peer"] == "spark"]
flink = [r for r in runs if r["peer"] == "flink"]
best = max(spark, key=lambda r: r["events_per_second"])
best_flink = max(flink, key=lambda r: r["events_per_second"])
print(f"## weir, Spark and Flink on the same files\n\n{hardware}. {events} reference events of {users} users "
      f"over one hour in {files} JSON-lines files; Spark {spark[0]['spark']} local[2]; Flink {flink[0]['flink']} "
      f"parallelism 2; weir 2 executors.\n")
print("| peer | query | settings | events/s | ratio to Spark's best | ratio to Flink's best |\n"
      "| --- | --- | --- | ---: | ---: | ---: |")
for r in spark:
    cap = "every file in one batch" if r["cap"] == 0 else f"maxFilesPerTrigger {r['cap']}"
    batches = f"{r['batches']} batch" + ("" if r["batches"] == 1 else "es")
    print(f"| Spark | approximate distinct | {cap}, {batches}, {r['seconds']:.1f} s "
          f"| {r['events_per_second']:,.0f} | {r['events_per_second'] / best['events_per_second']:.2f} | |")
for r in flink:
    settings = "mini-batch, two-phase and split distinct aggregation" if r["tuned"] else "defaults"
    print(f"| Flink | exact distinct users, no approximate distinct | {settings}, {r['windows']} windows, "
          f"{r['seconds']:.1f} s | {r['events_per_second']:,.0f} | "
          f"| {r['events_per_second'] / best_flink['events_per_second']:.2f} |")
for distinct, query in (("approx", "approximate distinct"), ("exact", "exact distinct users")):
    mine = sorted((r for r in runs if r["peer"] == "weir" and r["distinct"] == distinct),
                  key=lambda r: r["events_per_second"])
    median = mine[len(mine) // 2]
    spread = ", ".join(f"{r['events_per_second']:,.0f}" for r in mine)
    against_flink = (f"**{median['events_per_second'] / best_flink['events_per_second']:.1f}**"
                     if distinct == "exact" else "")
    print(f"| weir | {query} | {per_epoch} files an epoch, {median['epochs']} epochs, {median['seconds']:.2f} s; "
          f"median of rounds {spread} | {median['events_per_second']:,.0f} "
          f"| **{median['events_per_second'] / best['events_per_second']:.1f}** | {against_flink} |")
PY
