#!/usr/bin/env python3
"""Independent check of a dedup query's table (`query: {dedup: {key: [event_id], within}}`).

Replays the input files in name order, `--per-epoch` files per epoch, with Spark's
dropDuplicatesWithinWatermark rules written out in plain Python: the watermark of an epoch is
the largest event time of the epochs before it minus the delay; a row at or before it is late;
a key is remembered until the watermark reaches its first event time plus `within`; of the rows
of a key, the first read is kept. Reads the Delta table weir wrote with the `deltalake` package
and compares it row for row: every kept row once (append), or with `--merge` the last kept row
of each (event_id, event_type). Exits non-zero with a report on any difference.
"""
import argparse
import collections
import json
import os
import sys
from datetime import datetime, timezone

from deltalake import DeltaTable

MICROS = 1_000_000


def to_micros(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds


def row_of(event):
    props = event.get("properties") or {}
    if isinstance(props, list):
        props = dict(props)
    return (
        event["event_id"],
        event["user_id"],
        event["event_type"],
        event.get("page_url"),
        to_micros(event["timestamp"]),
        tuple(sorted(props.items())),
    )


def expected_rows(files, per_epoch, delay, within):
    watermark = None
    max_time = None
    remembered = {}
    kept = []
    late = duplicates = 0
    for start in range(0, len(files), per_epoch):
        for path in files[start : start + per_epoch]:
            with open(path) as f:
                for line in f:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    ts = to_micros(event["timestamp"])
                    max_time = ts if max_time is None else max(max_time, ts)
                    if watermark is not None and ts <= watermark:
                        late += 1
                        continue
                    key = event["event_id"]
                    expiry = remembered.get(key)
                    if expiry is not None and (watermark is None or expiry > watermark):
                        duplicates += 1
                        continue
                    remembered[key] = ts + within
                    kept.append(row_of(event))
        if max_time is not None:
            candidate = max_time - delay
            watermark = candidate if watermark is None else max(watermark, candidate)
    return kept, late, duplicates


def check_events(args):
    events = {}
    with open(args.events) as f:
        for line in f:
            record = json.loads(line)
            if record["kind"] not in ("valid", "late"):
                continue
            row = row_of(json.loads(record["value"]))
            events[row[0]] = row
    table = [row_of(r) for r in DeltaTable(args.table).to_pyarrow_table().to_pylist()]
    keys = collections.Counter(r[0] for r in table)
    twice = [k for k, n in keys.items() if n > 1]
    unknown = [r[:5] for r in table if events.get(r[0]) != r]
    report = {
        "events": len(events),
        "late": args.late,
        "table_rows": len(table),
        "twice": twice[:5],
        "not_an_event": unknown[:5],
    }
    print(json.dumps(report, default=str), flush=True)
    return not twice and not unknown and len(table) == len(events) - args.late


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", help="the input files, replayed by the rules")
    ap.add_argument("--per-epoch", type=int)
    ap.add_argument("--delay-seconds", type=int)
    ap.add_argument("--within-seconds", type=int)
    ap.add_argument(
        "--events",
        help="instead of --input: weir gen's ground truth of events without duplicates, read "
        "from a broker in epochs this check does not know; every row must be one of its events "
        "and every event but the --late ones the job dropped must be there once",
    )
    ap.add_argument("--late", type=int, default=0)
    ap.add_argument("--table", required=True)
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args()
    if args.events:
        os._exit(0 if check_events(args) else 1)

    files = sorted(
        os.path.join(args.input, name)
        for name in os.listdir(args.input)
        if not name.startswith(".")
    )
    kept, late, duplicates = expected_rows(
        files, args.per_epoch, args.delay_seconds * MICROS, args.within_seconds * MICROS
    )
    if args.merge:
        last = {}
        for row in kept:
            last[(row[0], row[2])] = row
        kept = list(last.values())
    expected = collections.Counter(kept)

    table = DeltaTable(args.table).to_pyarrow_table().to_pylist()
    actual = collections.Counter(row_of(r) for r in table)
    missing = expected - actual
    extra = actual - expected
    report = {
        "expected_rows": sum(expected.values()),
        "table_rows": sum(actual.values()),
        "late": late,
        "duplicates": duplicates,
        "missing": [list(r[:5]) for r in list(missing)[:5]],
        "extra": [list(r[:5]) for r in list(extra)[:5]],
    }
    print(json.dumps(report, default=str), flush=True)
    ok = not missing and not extra
    # deltalake's runtime can abort the interpreter's exit; the answer is already out.
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
