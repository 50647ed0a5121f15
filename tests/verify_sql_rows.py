#!/usr/bin/env python3
"""Independent check of the SQL query with row expressions in tests/sql.rs (`ROWS_QUERY`):
rows WHERE properties['browser'] <> 'edge', grouped by a 5-minute window, a CASE over
event_type (click and add_to_cart are 'engaged') and properties['country'], with count(*),
count(DISTINCT user_id) and the sum of the page number CAST from page_url, kept by HAVING
count(*) >= MIN_EVENTS.

Computes it with plain Python from the events `weir gen --jsonl` wrote (Spark's window rules,
SQL's NULL rules, the final watermark = max event time of every usable event - delay), reads
the Delta tables weir wrote with the `deltalake` package and compares them row for row. Records
of kind "malformed" must be in the dead letter, each once. Exits non-zero with a report.
"""
import argparse
import collections
import json
import sys

from deltalake import DeltaTable

from verify_reference import exit_now, parse_duration, to_micros, windows_of

ENGAGED = ("click", "add_to_cart")
# `substr(page_url, 28)`: SQL counts from 1; the generator's URLs are
# https://shop.example.com/p/<page>.
PAGE_FROM = 27


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--dead-letter", required=True)
    p.add_argument("--size", default="5m")
    p.add_argument("--delay", default="10m")
    p.add_argument("--min-events", type=int, required=True)
    p.add_argument("--expect-reason", action="append", default=[], metavar="TEXT",
                   help="some dead letter's reason must contain TEXT")
    a = p.parse_args()
    size, delay = parse_duration(a.size), parse_duration(a.delay)

    groups = collections.defaultdict(lambda: [0, set(), 0])
    malformed = collections.Counter()
    max_ts = None
    filtered = 0
    with open(a.events) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] == "malformed":
                raw = bytes.fromhex(rec["value_hex"]) if "value_hex" in rec else rec["value"].encode()
                malformed[raw] += 1
                continue
            ev = json.loads(rec["value"])
            ts = to_micros(ev["timestamp"])
            # The watermark follows every usable event, kept by WHERE or not.
            max_ts = ts if max_ts is None else max(max_ts, ts)
            if rec["kind"] == "late":
                continue
            props = ev.get("properties") or {}
            # NULL <> 'edge' is NULL: the row is not kept.
            if props.get("browser") is None or props["browser"] == "edge":
                filtered += 1
                continue
            kind = "engaged" if ev["event_type"] in ENGAGED else ev["event_type"]
            page = int(ev["page_url"][PAGE_FROM:])
            for w in windows_of(ts, size, size, 0):
                g = groups[(w[0], w[1], kind, props.get("country"))]
                g[0] += 1
                g[1].add(ev["user_id"])
                g[2] += page
    watermark = max_ts - delay
    closed = {k: v for k, v in groups.items() if k[1] <= watermark}
    expected = {k: v for k, v in closed.items() if v[0] >= a.min_events}
    problems = []
    # The test means something only if every part of the query had work to do.
    if filtered == 0:
        problems.append("WHERE kept every event: the input does not test it")
    if len(expected) in (0, len(closed)):
        problems.append(f"HAVING kept {len(expected)} of {len(closed)} groups: the input does not test it")
    if not any(k[2] == "engaged" for k in expected):
        problems.append("no 'engaged' group: the CASE is not tested")

    rows = DeltaTable(a.table).to_pyarrow_table().to_pylist()
    actual = {}
    for r in rows:
        key = (to_micros(r["window"]["start"]), to_micros(r["window"]["end"]), r["kind"], r["country"])
        if key in actual:
            problems.append(f"duplicate row for {key}")
        actual[key] = r
    missing = sorted(set(expected) - set(actual), key=str)
    extra = sorted(set(actual) - set(expected), key=str)
    if missing:
        problems.append(f"{len(missing)} groups missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected groups, e.g. {extra[:3]}")
    for key in sorted(set(expected) & set(actual), key=str):
        count, users, page_sum = expected[key]
        r = actual[key]
        for column, want in (("events", count), ("users", len(users)), ("page_sum", page_sum)):
            if r[column] != want:
                problems.append(f"{key}: {column} {r[column]} != {want}")

    dead = DeltaTable(a.dead_letter).to_pyarrow_table().to_pylist()
    dead_values = collections.Counter(bytes(r["value"] or b"") for r in dead)
    if dead_values != malformed:
        lost = malformed - dead_values
        more = dead_values - malformed
        problems.append(f"dead letter: {sum(lost.values())} malformed records missing "
                        f"{list(lost)[:2]}, {sum(more.values())} unexpected {list(more)[:2]}")
    reasons = [r["error"] for r in dead]
    for text in a.expect_reason:
        if not any(text in r for r in reasons):
            problems.append(f"no dead letter's reason contains {text!r}: {sorted(set(reasons))[:5]}")

    print(f"{len(actual)} rows checked against {len(expected)} expected "
          f"({len(closed) - len(expected)} groups below HAVING, {filtered} events filtered by WHERE, "
          f"{len(dead)} dead letters)")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_now(main())
