#!/usr/bin/env python3
"""Spark Structured Streaming on the reference query, as scripts/bench-peers.sh runs it.

The query: a 10-minute watermark on `timestamp`, 5-minute windows by event type with count(*),
approx_count_distinct(user_id) and approx_count_distinct(event_id) (Spark rejects exact
distinct in a stream), appended to Parquet. It reads the JSON-lines files under --input with
the reference schema, --max-files-per-trigger at a time (0: all of them in one batch), with
Trigger.AvailableNow, and prints one JSON line: the input rows and the time from the first
batch's start to the end of the last batch that read rows, from Spark's own progress reports
(so JVM start and query set-up are left out, as weir's figure leaves out process start).
"""
import argparse
import json
import sys
from datetime import datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--max-files-per-trigger", type=int, default=0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()

    spark = (
        SparkSession.builder.master(f"local[{args.cores}]")
        .appName("weir-bench-peers")
        .config("spark.driver.memory", args.driver_memory)
        # One shuffle partition per core: the default 200 would run 200 tiny tasks a batch.
        .config("spark.sql.shuffle.partitions", str(args.cores))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    schema = T.StructType(
        [
            T.StructField("event_id", T.StringType()),
            T.StructField("user_id", T.StringType()),
            T.StructField("event_type", T.StringType()),
            T.StructField("page_url", T.StringType()),
            T.StructField("timestamp", T.TimestampType()),
            T.StructField("properties", T.MapType(T.StringType(), T.StringType())),
        ]
    )
    reader = spark.readStream.schema(schema)
    if args.max_files_per_trigger > 0:
        reader = reader.option("maxFilesPerTrigger", args.max_files_per_trigger)
    events = reader.json(args.input)
    windows = (
        events.withWatermark("timestamp", "10 minutes")
        .groupBy(F.window("timestamp", "5 minutes"), "event_type")
        .agg(
            F.count(F.lit(1)).alias("event_count"),
            F.approx_count_distinct("user_id").alias("unique_users"),
            F.approx_count_distinct("event_id").alias("approx_unique"),
        )
    )
    query = (
        windows.writeStream.format("parquet")
        .outputMode("append")
        .option("path", f"{args.work_dir}/aggregated")
        .option("checkpointLocation", f"{args.work_dir}/checkpoint")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    batches = [p for p in query.recentProgress if p["numInputRows"] > 0]
    if not batches:
        sys.exit("spark read no rows")
    first, last = batches[0], batches[-1]
    end = parse_time(last["timestamp"]).timestamp() + last["durationMs"]["triggerExecution"] / 1000
    seconds = end - parse_time(first["timestamp"]).timestamp()
    rows = sum(p["numInputRows"] for p in batches)
    print(
        json.dumps(
            {
                "events": rows,
                "batches": len(batches),
                "seconds": seconds,
                "events_per_second": rows / seconds,
                "spark": spark.version,
            }
        ),
        flush=True,
    )
    spark.stop()


if __name__ == "__main__":
    main()
