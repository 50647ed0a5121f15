#!/usr/bin/env bash
# Runs the reference job end to end on this machine: a local tansu broker, 200 000 generated
# events (with late and malformed ones), `weir local` with two executors, Delta tables under
# .weir/demo/tables. Prints a sample of the output table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --quiet --bin weir
WEIR="${CARGO_TARGET_DIR:-target}/debug/weir"

DEMO=.weir/demo
rm -rf "$DEMO" .weir/local/realtime-analytics
source scripts/broker.sh
start_broker "$DEMO/broker" ${WEIR_DEMO_PORT:-9092}

$WEIR gen --brokers "$KAFKA_BROKERS" --topic web-events --partitions 4 --count 200000 \
  --users 20000 --span 4h --late-fraction 0.01 --malformed-fraction 0.01 --seed 1
$WEIR local --job examples/reference-local.yaml --executors "${WEIR_DEMO_EXECUTORS:-2}" --trigger available-now

python3 - "$DEMO/tables" <<'PY'
import sys
from deltalake import DeltaTable
base = sys.argv[1]
t = DeltaTable(f"{base}/aggregated").to_pyarrow_table()
d = DeltaTable(f"{base}/dead-letter").to_pyarrow_table()
print(f"\n{t.num_rows} window rows in {base}/aggregated, {d.num_rows} records in {base}/dead-letter")
rows = sorted(t.to_pylist(), key=lambda r: (r["window"]["start"], r["event_type"]))[:8]
for r in rows:
    print(f'  {r["window"]["start"]:%H:%M}-{r["window"]["end"]:%H:%M} {r["event_type"]:<12} '
          f'events={r["event_count"]:<5} users={r["unique_users"]:<5} approx={r["approx_unique"]}')
PY
