//! The exchange over real Flight connections on loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use arrow_flight::flight_service_server::FlightServiceServer;
use futures::StreamExt;
use prometheus::IntCounter;
use tokio::sync::oneshot;
use weir_common::query::aggregate::Partial;
use weir_common::query::keygroup::{key_group, range_for_owner};
use weir_common::query::window::Window;

use weir_proto::cluster_auth::{ClusterSecret, Guard, Sign};

use super::server::ExchangeService;
use super::wire::{decode_into, entries, BatchEncoder};
use super::*;
use crate::aggregate::partials::{Partials, PlanPartials, Shape};

const JOB: &str = "job-1";

const SECRET: &str = "exchange-test-secret-0123456789abcdef";

fn secret() -> ClusterSecret {
    ClusterSecret::from_text(SECRET).unwrap()
}

/// Serves `service` on a free loopback port until the returned sender is dropped.
async fn serve(service: ExchangeService) -> (String, oneshot::Sender<()>) {
    serve_guarded(service, Guard::new("test", None, || {})).await
}

/// Serves `service` behind `guard`.
async fn serve_guarded(service: ExchangeService, guard: Guard) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FlightServiceServer::with_interceptor(service, guard))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (address, stop)
}

fn bytes() -> IntCounter {
    IntCounter::new("flight_bytes", "Flight bytes").unwrap()
}

const KEY_GROUPS: u32 = 32;

fn window() -> Window {
    Window { start: 0, end: 300 }
}

/// Distinct values numbered `from..to`, as pre-aggregation sends them: a run per key group.
fn distinct(range: std::ops::Range<u32>) -> Partials {
    let values: Vec<Vec<u8>> = range.map(|i| format!("user-{i:08}").into_bytes()).collect();
    let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    Partials {
        distinct: crate::aggregate::partials::distinct_runs(
            0,
            window(),
            1,
            b"click",
            &values,
            KEY_GROUPS,
        ),
        ..Partials::default()
    }
}

fn header(epoch: u64, sender: &str) -> StreamHeader {
    StreamHeader {
        job_id: JOB.into(),
        epoch,
        sender: sender.into(),
        run: "run-1".into(),
        round: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_slows_its_sender_without_loss() {
    let (inbox, mut queue) = mpsc::channel(INBOX_CAPACITY);
    let (address, _stop) = serve(ExchangeService::new(JOB.into(), inbox, bytes())).await;
    let channel = Endpoint::from_shared(address).unwrap().connect_lazy();

    // 300 batches of 4096 distinct values (~60 KiB each): the sender could produce them all
    // at once; it may only run ahead of the owner by what the queue and HTTP/2 windows hold.
    const BATCHES: u64 = 300;
    let one = BatchEncoder::new(entries(PlanPartials(vec![distinct(0..4096)])))
        .next()
        .unwrap()
        .unwrap();
    let rows_per_batch = one.num_rows() as u64;
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let batches = futures::stream::iter(0..BATCHES).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<RecordBatch, arrow_flight::error::FlightError>(one.clone())
    });
    let sender = tokio::spawn(client::send_stream(
        channel,
        &Sign(None),
        header(1, "fast"),
        BATCHES * rows_per_batch,
        batches,
        bytes(),
    ));

    // The owner: takes one batch at a time and works on it before taking the next.
    let mut taken = 0u64;
    let mut rows = 0u64;
    let mut most_ahead = 0u64;
    let mut merged = PlanPartials::default();
    while let Some(msg) = queue.recv().await {
        match msg {
            InboxMsg::Batch { batch, .. } => {
                taken += 1;
                most_ahead = most_ahead.max(pulled.load(Ordering::SeqCst) - taken);
                rows += decode_into(&batch, &[Shape::for_tests()], &mut merged).unwrap() as u64;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            InboxMsg::End {
                rows: announced,
                reply,
                ..
            } => {
                assert_eq!(announced, rows);
                reply.send(Ok(rows)).unwrap();
                break;
            }
            _ => panic!("unexpected inbox message"),
        }
    }
    let ack = sender.await.unwrap().unwrap();
    assert_eq!(taken, BATCHES);
    assert_eq!(ack.rows, BATCHES * rows_per_batch);
    assert_eq!(merged.take(0).unique_distinct(), 4096);
    println!("the sender ran at most {most_ahead} batches ahead of the owner");
    assert!(
        most_ahead <= 64,
        "the sender ran {most_ahead} of {BATCHES} batches ahead of a slow owner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_job_is_refused() {
    let (inbox, _queue) = mpsc::channel(INBOX_CAPACITY);
    let (address, _stop) = serve(ExchangeService::new(JOB.into(), inbox, bytes())).await;
    let channel = Endpoint::from_shared(address).unwrap().connect_lazy();
    let mut h = header(1, "stranger");
    h.job_id = "another-job".into();
    let err = client::send_entries(
        channel,
        Sign(None),
        "owner",
        h,
        entries(PlanPartials(vec![distinct(0..3)])),
        bytes(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not another-job"), "{err}");
}

/// A closed cluster's exchange takes streams signed with its secret only: an unsigned stream
/// or one signed with another secret is refused at once (not retried) and never reaches the
/// inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_the_cluster_credential_is_refused() {
    let (inbox, mut queue) = mpsc::channel(INBOX_CAPACITY);
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    let guard = Guard::new("executor", Some(secret()), move || {
        count.fetch_add(1, Ordering::Relaxed);
    });
    let (address, _stop) =
        serve_guarded(ExchangeService::new(JOB.into(), inbox, bytes()), guard).await;
    let channel = Endpoint::from_shared(address).unwrap().connect_lazy();
    let other = ClusterSecret::from_text("another-secret-0123456789abcdef0123").unwrap();
    for sign in [Sign(None), Sign(Some(other))] {
        let err = client::send_entries(
            channel.clone(),
            sign,
            "owner",
            header(1, "rogue"),
            entries(PlanPartials(vec![distinct(0..3)])),
            bytes(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cluster credential"), "{err}");
    }
    assert_eq!(refused.load(Ordering::Relaxed), 2, "one refusal per stream");
    assert!(queue.try_recv().is_err(), "nothing reached the inbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_executors_shuffle_every_entry_to_its_owner() {
    let ids = ["a", "b", "c"];
    let mut peers = Vec::new();
    let mut exchanges = Vec::new();
    let mut stops = Vec::new();
    let (sent, received) = (bytes(), bytes());
    for id in ids {
        let inbox = inbox::spawn(INBOX_CAPACITY, vec![Shape::for_tests()]);
        let (address, stop) = serve_guarded(
            ExchangeService::new(JOB.into(), inbox.clone(), received.clone()),
            Guard::new("executor", Some(secret()), || {}),
        )
        .await;
        stops.push(stop);
        peers.push(Peer {
            executor_id: id.into(),
            address,
        });
        exchanges.push(Exchange::new(
            JOB.into(),
            id.into(),
            inbox,
            Duration::from_secs(60),
            sent.clone(),
            Sign(Some(secret())),
        ));
    }
    let owners: Vec<usize> = (0..KEY_GROUPS)
        .map(|kg| {
            (0..3)
                .position(|i| range_for_owner(KEY_GROUPS, 3, i).contains(&kg))
                .unwrap()
        })
        .collect();
    // Each executor read overlapping users of one group and counted 10 rows per group.
    let mut tasks = Vec::new();
    for (i, mut exchange) in exchanges.into_iter().enumerate() {
        let start = i as u32 * 500;
        let mut p = distinct(start..start + 1000);
        p.add_group(
            (window(), b"click".to_vec()),
            vec![Partial::Count(10), Partial::Distinct(0)],
        )
        .unwrap();
        let outgoing = PlanPartials::by_peer(vec![p.split(&owners, 3)], 3);
        let peers = peers.clone();
        tasks.push(tokio::spawn(async move {
            exchange
                .shuffle(7, "run-1", 0, &peers, i, outgoing)
                .await
                .unwrap()
        }));
    }
    let mut owned = Vec::new();
    for t in tasks {
        owned.push(t.await.unwrap().0.take(0));
    }
    // 0..2000 overall, each value at exactly one owner, the group row summed at its owner.
    let all: usize = owned.iter().map(Partials::unique_distinct).sum();
    assert_eq!(all, 2000);
    for (i, p) in owned.iter().enumerate() {
        for run in &p.distinct {
            let kg = crate::state::keys::key_group_of(&run.key).unwrap();
            assert_eq!(owners[kg as usize], i);
        }
    }
    let group_owner = owners[key_group(b"click", KEY_GROUPS) as usize];
    assert!(matches!(
        owned[group_owner].groups[&(window(), b"click".to_vec())][0],
        Partial::Count(30)
    ));
    // Every byte one executor sent, another received.
    assert!(sent.get() > 0);
    assert_eq!(sent.get(), received.get());
    drop(stops);
}
