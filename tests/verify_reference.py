#!/usr/bin/env python3
"""Independent check of the reference job's output.

Reads the events `weir gen --jsonl` wrote, computes the windowed aggregates with plain Python
(Spark's window rules, the final watermark = max event time - delay), reads the Delta tables
weir wrote with the `deltalake` Python package, and compares them row for row. Exits non-zero
with a report on any difference.
"""
import argparse
import collections
import json
import os
import sys
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

import pyarrow as pa

from deltalake import DeltaTable
from pyarrow import fs as pafs

MICROS = 1_000_000


def parse_duration(text):
    units = {"ms": 1000, "s": MICROS, "m": 60 * MICROS, "h": 3600 * MICROS}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * units[suffix]
    raise ValueError(f"duration {text!r}")


def to_micros(value):
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds
    return to_micros(datetime.fromisoformat(value.replace("Z", "+00:00")))


class Storage:
    """Opens local paths and s3:// URLs (on --s3-endpoint, with the AWS_* credentials)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def options(self, uri):
        if not uri.startswith("s3://"):
            return None
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        }

    def table(self, uri):
        return DeltaTable(uri, storage_options=self.options(uri))

    def fs(self, uri):
        """A pyarrow filesystem and the path of `uri` in it."""
        if uri.startswith("s3://"):
            u = urlparse(self.endpoint)
            s3 = pafs.S3FileSystem(
                access_key=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
                region=os.environ.get("AWS_REGION", "us-east-1"),
                endpoint_override=u.netloc,
                scheme=u.scheme,
            )
            return s3, uri[len("s3://"):].rstrip("/")
        return pafs.LocalFileSystem(), uri.removeprefix("file://").rstrip("/")

    def files(self, uri):
        """Paths of every file under `uri`, relative to it ([] when it does not exist)."""
        fs, root = self.fs(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return [i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File]

    def read(self, uri, rel):
        fs, root = self.fs(uri)
        with fs.open_input_stream(f"{root}/{rel}") as f:
            return f.read()


def unreferenced_files(storage, uri):
    """Data files in a table's location that its log does not reference (left by failed runs):
    neither live nor removed by a commit (compaction's replaced files, kept until vacuum)."""
    table = storage.table(uri)
    actions = pa.table(table.get_add_actions(flatten=True))
    referenced = {unquote(p) for p in actions.column("path").to_pylist()}
    # A dry-run vacuum with no retention lists every file a commit removed.
    removed = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)
    referenced |= {unquote(p) for p in removed}
    return sorted(
        f for f in storage.files(uri)
        if f.endswith(".parquet") and not f.startswith("_delta_log/") and f not in referenced
    )


def windows_of(ts, size, slide, start):
    last_start = ts - ((ts - start) % slide)  # Python's % floors, as Spark's rule needs
    w = last_start
    while w > ts - size:
        yield (w, w + size)
        w -= slide


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--dead-letter", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--size", default="5m")
    p.add_argument("--slide", default=None)
    p.add_argument("--start", default="0s")
    p.add_argument("--delay", default="10m")
    p.add_argument("--rsd", type=float, default=0.05)
    p.add_argument("--output-mode", choices=["append", "update"], default="append",
                   help="update: the table holds every window seen (its latest value), closed or not")
    p.add_argument("--same-as", help="another weir output table that must hold exactly the same rows")
    p.add_argument("--late-rows", help="the job's late-rows table: it must hold exactly the late events")
    p.add_argument("--s3-endpoint", help="the S3 API endpoint of s3:// locations")
    p.add_argument("--skip-first", action="append", default=[], metavar="PARTITION:N",
                   help="the first N records of a partition are gone from the broker")
    p.add_argument("--max-record-bytes", type=int, default=1 << 20,
                   help="the job's max_record_bytes")
    p.add_argument("--expect-reason", action="append", default=[], metavar="TEXT",
                   help="some dead letter's reason must contain TEXT")
    p.add_argument("--state-retention", type=int, default=10,
                   help="decided epochs whose state snapshots the checkpoint keeps")
    a = p.parse_args()
    storage = Storage(a.s3_endpoint)
    size, delay = parse_duration(a.size), parse_duration(a.delay)
    slide = parse_duration(a.slide) if a.slide else size
    start = parse_duration(a.start)

    skip = {int(p): int(n) for p, n in (x.split(":") for x in a.skip_first)}
    seen = collections.Counter()
    kinds = collections.Counter()
    malformed_values = collections.Counter()
    late_values = collections.Counter()
    groups = collections.defaultdict(lambda: [0, set(), set()])
    max_ts = None
    with open(a.events) as f:
        for line in f:
            rec = json.loads(line)
            seen[rec["partition"]] += 1
            if seen[rec["partition"]] <= skip.get(rec["partition"], 0):
                continue
            kinds[rec["kind"]] += 1
            if rec["kind"] == "malformed":
                raw = bytes.fromhex(rec["value_hex"]) if "value_hex" in rec else rec["value"].encode()
                # The dead letter keeps the first max_record_bytes of a larger record.
                malformed_values[raw[: a.max_record_bytes]] += 1
                continue
            ev = json.loads(rec["value"])
            ts = to_micros(ev["timestamp"])
            max_ts = ts if max_ts is None else max(max_ts, ts)
            if rec["kind"] == "late":
                late_values[rec["value"].encode()] += 1
                continue
            for w in windows_of(ts, size, slide, start):
                g = groups[(w[0], w[1], ev["event_type"])]
                g[0] += 1
                g[1].add(ev["user_id"])
                g[2].add(ev["event_id"])
    watermark = max_ts - delay
    if a.output_mode == "update":
        expected = dict(groups)
    else:
        expected = {k: v for k, v in groups.items() if k[1] <= watermark}

    rows = storage.table(a.table).to_pyarrow_table().to_pylist()
    actual = {}
    problems = []
    for r in rows:
        key = (to_micros(r["window"]["start"]), to_micros(r["window"]["end"]), r["event_type"])
        if key in actual:
            problems.append(f"duplicate row for {key}")
        actual[key] = r
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing:
        problems.append(f"{len(missing)} windows missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected windows, e.g. {extra[:3]}")
    worst = 0.0
    errors, beyond_3 = [], []
    for key in sorted(set(expected) & set(actual)):
        count, users, ids = expected[key]
        r = actual[key]
        if r["event_count"] != count:
            problems.append(f"{key}: event_count {r['event_count']} != {count}")
        if r["unique_users"] != len(users):
            problems.append(f"{key}: unique_users {r['unique_users']} != {len(users)}")
        err = abs(r["approx_unique"] - len(ids)) / len(ids)
        worst = max(worst, err)
        errors.append(err)
        if err > 3 * a.rsd:
            beyond_3.append(f"{key}: approx_unique {r['approx_unique']} vs {len(ids)} ({err:.3f})")
        if err > 5 * a.rsd:
            problems.append(f"{key}: approx_unique {r['approx_unique']} vs {len(ids)} ({err:.3f} > 5 x rsd)")
    # The sketch's error is a distribution with standard deviation rsd: a window beyond 3 x rsd
    # happens about once in 370 windows, so a long run has some. Its root mean square must stay
    # near rsd, and windows beyond 3 x rsd must stay rare.
    rms = (sum(e * e for e in errors) / len(errors)) ** 0.5 if errors else 0.0
    if rms > 1.25 * a.rsd:
        problems.append(f"approx_unique: root mean square error {rms:.4f} > 1.25 x rsd {a.rsd}")
    if len(beyond_3) > max(1, len(errors) // 100):
        problems.append(f"approx_unique beyond 3 x rsd in {len(beyond_3)} of {len(errors)} windows: {beyond_3[:3]}")

    if a.same_as:
        def comparable(r):
            # processing_time is the plan's clock; every other column must be identical.
            return (to_micros(r["window"]["start"]), to_micros(r["window"]["end"]), r["event_type"],
                    r["event_count"], r["unique_users"], r["approx_unique"])
        ours = sorted(comparable(r) for r in rows)
        theirs = sorted(comparable(r) for r in storage.table(a.same_as).to_pyarrow_table().to_pylist())
        if ours != theirs:
            diff = sorted(set(ours) ^ set(theirs))
            problems.append(f"the table differs from {a.same_as} in {len(diff)} rows, e.g. {diff[:3]}")

    late = malformed = 0
    checkpoint_files = storage.files(a.checkpoint)
    # The log holds records named by their epoch and nothing else (a crash inside a local
    # write leaves `<epoch>#<n>`, which the next driver removes).
    stray = [f for f in checkpoint_files
             if f.startswith(("commits/", "offsets/")) and not f.split("/")[1].isdigit()]
    if stray:
        problems.append(f"the checkpoint log holds files that are no records: {stray[:3]}")
    commits = sorted(
        (f for f in checkpoint_files if f.startswith("commits/") and f.split("/")[1].isdigit()),
        key=lambda f: int(f.split("/")[1]),
    )
    decisions = [json.loads(storage.read(a.checkpoint, rel)) for rel in commits]
    # State retention: the last decisions' snapshots are all there, and nothing else is.
    state_files = {f for f in checkpoint_files if f.startswith("state/")}
    kept = {f["path"] for d in decisions[-a.state_retention:] for s in d.get("state", []) for f in s["files"]}
    if decisions and not decisions[-1].get("state"):
        problems.append("the last decision records no state snapshot")
    if kept - state_files:
        problems.append(f"{len(kept - state_files)} state files of retained decisions are missing, e.g. {sorted(kept - state_files)[:3]}")
    if state_files - kept:
        problems.append(f"{len(state_files - kept)} state files no retained decision references, e.g. {sorted(state_files - kept)[:3]}")
    # The log keeps the last decisions only; the last one's totals cover the whole job.
    if len(decisions) > a.state_retention:
        problems.append(f"the checkpoint log holds {len(decisions)} decisions, more than the {a.state_retention} retained")
    plans = [f for f in checkpoint_files if f.startswith("offsets/")]
    if len(plans) > a.state_retention + 1:
        problems.append(f"the checkpoint log holds {len(plans)} plans, more than the {a.state_retention} retained and one running")
    if decisions:
        totals = decisions[-1]["totals"]
        late = totals["late_rows"]
        malformed = totals["malformed_rows"]
    if late != kinds["late"]:
        problems.append(f"late rows: weir counted {late}, the generator made {kinds['late']}")
    if malformed != kinds["malformed"]:
        problems.append(f"malformed rows: weir counted {malformed}, the generator made {kinds['malformed']}")

    dead = storage.table(a.dead_letter).to_pyarrow_table().to_pylist()
    dead_values = collections.Counter(bytes(d["value"] or b"") for d in dead)
    if dead_values != malformed_values:
        diff = (dead_values - malformed_values) + (malformed_values - dead_values)
        problems.append(f"dead-letter table differs from the malformed records: {[v[:100] for v in list(diff)[:3]]}")
    if any(not d["error"] for d in dead):
        problems.append("a dead-letter row has no reason")
    for text in a.expect_reason:
        if not any(text in (d["error"] or "") for d in dead):
            problems.append(f"no dead letter's reason contains {text!r}")
    if a.late_rows:
        kept = storage.table(a.late_rows).to_pyarrow_table().to_pylist()
        kept_values = collections.Counter(bytes(r["value"] or b"") for r in kept)
        if kept_values != late_values:
            diff = (kept_values - late_values) + (late_values - kept_values)
            problems.append(f"late-rows table differs from the late events in {sum(diff.values())}: {[v[:100] for v in list(diff)[:3]]}")
        for r in kept:
            if not (to_micros(r["event_time"]) < to_micros(r["watermark"]) and r["reason"]):
                problems.append(f"a late row is not late for its watermark, or has no reason: {r}")
                break
    for uri in (a.table, a.dead_letter) + ((a.late_rows,) if a.late_rows else ()):
        left = unreferenced_files(storage, uri)
        if left:
            problems.append(f"{len(left)} data files in {uri} that no commit references, e.g. {left[:3]}")

    print(
        f"events: {sum(kinds.values())} ({kinds['valid']} valid, {kinds['late']} late, "
        f"{kinds['malformed']} malformed); windows expected {len(expected)}, in table {len(actual)}; "
        f"approx_unique error worst {worst:.4f}, root mean square {rms:.4f}, "
        f"beyond 3 x rsd in {len(beyond_3)}; "
        f"dead letters {len(dead)}; checkpoint: {len(decisions)} decisions, {len(state_files)} state files"
        + (f"; identical to {a.same_as}" if a.same_as and not problems else "")
    )
    if problems:
        print("MISMATCH:\n  " + "\n  ".join(problems[:50]), file=sys.stderr)
        return 1
    if not expected:
        print("MISMATCH: no window expected; the test data is too small", file=sys.stderr)
        return 1
    print("OK: the Delta table equals the ground truth")
    return 0


def exit_now(code):
    """Exits with `code` once the output is out, without the interpreter's teardown:
    deltalake's native runtime can abort while it tears down its threads ("terminate called
    without an active exception"), and the verdict is already made."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
