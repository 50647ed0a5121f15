//! The S3 server the chaos tests use enforces conditional put, and weir's S3 client relies on
//! it: a second, different record at the same place in the checkpoint log is refused.

mod support;

use std::collections::BTreeMap;

use support::s3::S3Server;
use weir_common::checkpoint::{EpochPlan, PartitionRange};
use weir_storage::{CheckpointLog, LogError};

fn plan(end: i64) -> EpochPlan {
    EpochPlan {
        epoch: 1,
        topic: "web-events".into(),
        ranges: vec![PartitionRange {
            partition: 0,
            start: 0,
            end,
        }],
        watermark_micros: None,
        planned_at_micros: 1,
        assignment: vec![],
        lost: vec![],
        files: vec![],
    }
}

#[tokio::test]
async fn a_second_driver_cannot_overwrite_a_plan_on_s3() {
    let s3 = S3Server::start("weir");
    let options: BTreeMap<String, String> = [
        ("aws_endpoint", s3.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let log = CheckpointLog::open("s3://weir/job/checkpoint", &options).expect("log on S3");
    log.write_plan(&plan(10)).await.expect("first plan");
    // The same plan again is a replay of the step: accepted.
    log.write_plan(&plan(10)).await.expect("replayed plan");
    // Another plan for the same epoch is another driver: refused by the conditional put.
    match log.write_plan(&plan(20)).await {
        Err(LogError::Conflict(where_)) => assert!(where_.contains("offsets/1"), "{where_}"),
        other => panic!("a different plan was not refused: {other:?}"),
    }
    assert_eq!(log.plan(1).await.expect("read back"), Some(plan(10)));
    assert_eq!(log.latest("offsets").await.expect("list"), Some(1));
}
