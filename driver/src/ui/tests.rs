//! The dashboard's server over a real socket, as a browser meets it.

use std::sync::Arc;

use weir_proto::admin::{DurationMs, QueryProgress};

use super::*;
use crate::admin::tests::service;
use crate::ops::query_status::StatusBoard;

struct Running {
    base: String,
    client: reqwest::Client,
    board: StatusBoard,
    _dashboard: Dashboard,
    _closing: watch::Sender<bool>,
}

async fn start(token: Option<&str>) -> Running {
    let (admin, board) = service(token);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let facts = JobFacts {
        name: "q".into(),
        source: "web-events".into(),
        checkpoint_location: "file:///c".into(),
        checkpoint_retention: 10,
        key_groups: 256,
        tables: vec![TableLink {
            role: "output".into(),
            url: "file:///t".into(),
        }],
    };
    let (closing_tx, closing) = watch::channel(false);
    let dashboard = Dashboard::serve(listener, Arc::new(admin), facts, closing);
    Running {
        base,
        client: reqwest::Client::new(),
        board,
        _dashboard: dashboard,
        _closing: closing_tx,
    }
}

impl Running {
    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send().await.unwrap()
    }

    async fn json(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        let response = self.get(path, token).await;
        assert_eq!(response.status(), 200, "{path}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn the_page_is_open_and_every_api_call_needs_the_token() {
    let ui = start(Some("s3cret")).await;
    let page = ui.get("/", None).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        let response = ui.get(&format!("/assets/{asset}"), None).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(!response.bytes().await.unwrap().is_empty());
    }
    // Encoded, so that the client sends the dots and the asset handler gets them.
    let escape = ui.get("/assets/%2e%2e%2fCargo.toml", None).await;
    assert_eq!(escape.status(), 404);

    for path in [
        "status",
        "progress",
        "progress/recent",
        "executors",
        "timeline",
        "job",
    ] {
        let path = format!("/api/v1/{path}");
        let missing = ui.get(&path, None).await;
        assert_eq!(missing.status(), 401, "{path}");
        assert!(missing.headers().contains_key("www-authenticate"));
        let body: serde_json::Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("admin token"));
        assert_eq!(ui.get(&path, Some("wrong")).await.status(), 403, "{path}");
    }
    let status = ui.json("/api/v1/status", Some("s3cret")).await;
    assert_eq!(status["name"], "q");
    assert_eq!(status["state"], "RECOVERING");
}

#[tokio::test]
async fn progress_and_the_timeline_follow_the_committed_epochs() {
    let ui = start(None).await;
    let access = ui.json("/api/v1/access", None).await;
    assert_eq!(access["tokenRequired"], false);
    let before = ui.get("/api/v1/progress", None).await;
    assert_eq!(before.status(), 404);
    for epoch in 0..3 {
        ui.board.committed(
            QueryProgress {
                batch_id: epoch,
                num_input_rows: 100 + epoch,
                num_executors: 2,
                duration_ms: Some(DurationMs {
                    total: 40,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &[],
            None,
            Some(1_767_225_600_000_000),
            crate::ops::timeline::now_ms(),
        );
    }
    let progress = ui.json("/api/v1/progress", None).await;
    assert_eq!(progress["batchId"], 2);
    assert_eq!(progress["numInputRows"], 102);
    let recent = ui.json("/api/v1/progress/recent?limit=2", None).await;
    let epochs: Vec<u64> = recent["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["batchId"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2]);
    let status = ui.json("/api/v1/status", None).await;
    assert_eq!(status["lastEpoch"], 2);
    assert_eq!(status["watermark"], "2026-01-01T00:00:00.000Z");

    let timeline = ui.json("/api/v1/timeline", None).await;
    let samples = timeline["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[2]["inputRows"], 102);
    assert_eq!(samples[2]["executors"], 2);
    assert_eq!(samples[2]["phasesMs"]["total"], 40);
    let newer = ui.json("/api/v1/timeline?after=1", None).await;
    assert_eq!(newer["samples"].as_array().unwrap().len(), 1);

    ui.board
        .timeline
        .add_event("executor_lost", "executor `e1` was lost", Some(2));
    let timeline = ui.json("/api/v1/timeline?after=2", None).await;
    assert!(timeline["samples"].as_array().unwrap().is_empty());
    assert_eq!(timeline["events"][0]["kind"], "executor_lost");
    assert_eq!(timeline["events"][0]["epoch"], 2);

    let executors = ui.json("/api/v1/executors", None).await;
    assert!(executors["executors"].as_array().unwrap().is_empty());
    let job = ui.json("/api/v1/job", None).await;
    assert_eq!(job["checkpointRetention"], 10);
    assert_eq!(job["tables"][0]["url"], "file:///t");
    let unknown = ui.get("/api/v2/status", None).await;
    assert_eq!(unknown.status(), 404);
    let bad = ui.get("/api/v1/timeline?after=x", None).await;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&bad.text().await.unwrap()).unwrap();
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn without_a_token_only_addresses_and_localhost_are_answered() {
    let ui = start(None).await;
    let with_host = |host: &'static str| {
        ui.client
            .get(format!("{}/api/v1/status", ui.base))
            .header(reqwest::header::HOST, host)
            .send()
    };
    for host in ["localhost:7420", "127.0.0.1:7420", "[::1]:7420", "10.1.2.3"] {
        assert_eq!(with_host(host).await.unwrap().status(), 200, "{host}");
    }
    // A page served by another name that now resolves here (DNS rebinding).
    let rebound = with_host("attacker.example:7420").await.unwrap();
    assert_eq!(rebound.status(), 403);
    // With a token, the token is what counts.
    let guarded = start(Some("s3cret")).await;
    let by_name = guarded
        .client
        .get(format!("{}/api/v1/status", guarded.base))
        .header(reqwest::header::HOST, "weir-driver.weir.svc:7420")
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), 200);
}
