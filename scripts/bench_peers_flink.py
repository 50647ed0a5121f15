#!/usr/bin/env python3
"""Apache Flink on the reference query, as scripts/bench-peers.sh runs it.

The query, in Flink SQL in streaming mode (which ends as the files are bounded): a watermark
on `timestamp`, 5-minute tumbling windows (the window table function) by event type with
count(*) and the exact count(DISTINCT user_id), which Flink, unlike Spark, runs in a stream.
Flink's streaming SQL has no approximate distinct, so the reference query's
approx_count_distinct(event_id) is left out: Flink does less than weir's exact job does. It
reads the JSON-lines files under --input with the reference schema (the filesystem
connector), with --parallelism tasks, and collects the windows (a few hundred rows). It
prints one JSON line: the input rows (the windows' counts summed) and the job's net runtime
from Flink's own execution result (so JVM start and planning are left out, as weir's figure
leaves out process start; the job's deployment in the local cluster is in it).

Flink's file source hands files out in no set order, so a watermark 10 minutes behind the
events it has read drops most of the others as late: --watermark-delay-minutes sets it to
cover the input's span, and no event is late.

--tuned turns on what Flink's documentation gives for aggregations (mini-batch, local-global
aggregation, distinct aggregates split into buckets); without it Flink runs its defaults.
Either way state is on the heap and no checkpoint is taken (weir snapshots every epoch).
"""
import argparse
import json
import sys

from pyflink.table import EnvironmentSettings, TableEnvironment
from pyflink.version import __version__ as flink_version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--tuned", action="store_true")
    ap.add_argument("--watermark-delay-minutes", type=int, default=10)
    args = ap.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("taskmanager.numberOfTaskSlots", str(args.parallelism))
    config.set("taskmanager.memory.process.size", "4g")
    config.set("pipeline.object-reuse", "true")
    if args.tuned:
        config.set("table.exec.mini-batch.enabled", "true")
        config.set("table.exec.mini-batch.allow-latency", "1 s")
        config.set("table.exec.mini-batch.size", "5000")
        config.set("table.optimizer.agg-phase-strategy", "TWO_PHASE")
        config.set("table.optimizer.distinct-agg.split.enabled", "true")

    env.execute_sql(
        f"""
        CREATE TABLE events (
            event_id STRING,
            user_id STRING,
            event_type STRING,
            page_url STRING,
            `timestamp` TIMESTAMP_LTZ(3),
            properties MAP<STRING, STRING>,
            WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '{args.watermark_delay_minutes}' MINUTE
        ) WITH (
            'connector' = 'filesystem',
            'path' = 'file://{args.input}',
            'format' = 'json',
            'json.timestamp-format.standard' = 'ISO-8601'
        )
        """
    )
    result = env.execute_sql(
        """
        SELECT window_start, event_type, COUNT(*) AS event_count,
               COUNT(DISTINCT user_id) AS unique_users
        FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(`timestamp`), INTERVAL '5' MINUTES))
        GROUP BY window_start, window_end, event_type
        """
    )
    windows = 0
    rows = 0
    with result.collect() as collected:
        for row in collected:
            windows += 1
            rows += row[2]
    job = result.get_job_client().get_job_execution_result().result()
    seconds = job.get_net_runtime() / 1000
    if rows == 0:
        sys.exit("flink counted no rows")
    print(
        json.dumps(
            {
                "events": rows,
                "windows": windows,
                "seconds": seconds,
                "events_per_second": rows / seconds,
                "flink": flink_version,
                "tuned": args.tuned,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
