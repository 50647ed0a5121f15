//! The inbox: an actor that takes the partial aggregates other executors stream to this one,
//! keeps each stream apart until its end-of-epoch marker arrives, then merges it into the
//! epoch's total. The epoch runner collects the total once every peer's marker is in.
//!
//! A stream that breaks before its marker is dropped whole, so a sender may send again; a
//! stream that repeats a finished one is acknowledged and ignored (its content is the same).
//! Streams are kept per run of an epoch: after a failure the epoch runs again under a new run
//! id, and what the abandoned run sent is dropped when the new run is collected. A run may
//! exchange in several rounds (update mode sends distinct counts after folding); each round is
//! collected on its own, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::wire::decode_into;
use crate::aggregate::partials::{PlanPartials, Shape};

/// Identifies one incoming stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub epoch: u64,
    /// The run of the epoch the stream belongs to.
    pub run: String,
    /// The exchange round of the run.
    pub round: u32,
    pub sender: String,
    /// Distinguishes a resent stream from the first one.
    pub connection: u64,
}

impl StreamId {
    fn run_key(&self) -> RunKey {
        RunKey {
            epoch: self.epoch,
            run: self.run.clone(),
            round: self.round,
        }
    }
}

/// An epoch, one run of it, and one exchange round of that run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    pub epoch: u64,
    pub run: String,
    pub round: u32,
}

impl RunKey {
    /// Whether a stream of this round can no longer be collected once `last` was: it belongs
    /// to an earlier epoch, or to a round of the same run collected already. (Another run of
    /// the same epoch may still come: the driver runs an epoch again after a failure.)
    fn stale_after(&self, last: &RunKey) -> bool {
        self.epoch < last.epoch
            || (self.epoch == last.epoch && self.run == last.run && self.round <= last.round)
    }

    /// Whether this round was abandoned or done with once `current` is collected: it belongs
    /// to an earlier epoch, another run of the same one, or an earlier round of the same run.
    fn superseded_by(&self, current: &RunKey) -> bool {
        self.epoch < current.epoch
            || (self.epoch == current.epoch
                && (self.run != current.run || self.round < current.round))
    }
}

pub enum InboxMsg {
    /// A record batch of a stream.
    Batch {
        stream: StreamId,
        batch: RecordBatch,
    },
    /// The stream's end-of-epoch marker with the number of rows its sender sent.
    End {
        stream: StreamId,
        rows: u64,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// The stream broke before its marker.
    Abandon { stream: StreamId },
    /// Answers with the run's merged partials once every sender in `senders` has finished.
    Collect {
        run: RunKey,
        senders: BTreeSet<String>,
        reply: oneshot::Sender<Result<Received, String>>,
    },
    /// Which senders have finished a run.
    Finished {
        run: RunKey,
        reply: oneshot::Sender<BTreeSet<String>>,
    },
}

/// What the peers sent for one epoch.
#[derive(Debug, Default)]
pub struct Received {
    pub partials: PlanPartials,
    pub rows: u64,
}

/// The epoch runner waiting for these senders, and where to answer it.
type Waiter = (BTreeSet<String>, oneshot::Sender<Result<Received, String>>);

#[derive(Default)]
struct EpochInbox {
    total: Received,
    finished: BTreeSet<String>,
    /// Streams that finished before this executor's runner said which peers the run has,
    /// kept apart until it does: only the run's peers are merged.
    early: BTreeMap<String, Received>,
    /// A stream whose batches could not be decoded poisons the epoch.
    failure: Option<String>,
    waiter: Option<Waiter>,
}

#[derive(Default)]
struct OpenStream {
    partials: PlanPartials,
    rows: u64,
    failure: Option<String>,
}

/// Starts the inbox actor; `capacity` bounds the batches in its queue (the backpressure that
/// slows senders when this executor merges more slowly than they send). What arrives is
/// checked against the shape of its operator (`shapes[op]`, one per operator of the plan).
pub fn spawn(capacity: usize, shapes: Vec<Shape>) -> mpsc::Sender<InboxMsg> {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(run(rx, shapes).in_current_span());
    tx
}

async fn run(mut messages: mpsc::Receiver<InboxMsg>, shapes: Vec<Shape>) {
    let mut epochs: BTreeMap<RunKey, EpochInbox> = BTreeMap::new();
    let mut open: HashMap<StreamId, OpenStream> = HashMap::new();
    // The last run collected: streams of it or of earlier epochs are stale.
    let mut collected: Option<RunKey> = None;
    while let Some(msg) = messages.recv().await {
        match msg {
            InboxMsg::Batch { stream, batch } => {
                let s = open.entry(stream).or_default();
                if s.failure.is_none() {
                    // Decoding merges on this task; it is the work the queue meters.
                    match tokio::task::block_in_place(|| {
                        decode_into(&batch, &shapes, &mut s.partials)
                    }) {
                        Ok(rows) => s.rows += rows as u64,
                        Err(e) => s.failure = Some(e.to_string()),
                    }
                }
            }
            InboxMsg::Abandon { stream } => {
                open.remove(&stream);
            }
            InboxMsg::End {
                stream,
                rows,
                reply,
            } => {
                let s = open.remove(&stream).unwrap_or_default();
                let key = stream.run_key();
                let stale = collected.as_ref().is_some_and(|c| key.stale_after(c));
                if stale {
                    let _ = reply.send(Err(format!(
                        "epoch {} was already collected; the stream from {} is stale",
                        stream.epoch, stream.sender
                    )));
                    continue;
                }
                let epoch = epochs.entry(key.clone()).or_default();
                let answer = if let Some(f) = s.failure {
                    epoch.failure = Some(format!("stream from {}: {f}", stream.sender));
                    Err(f)
                } else if s.rows != rows {
                    Err(format!(
                        "received {} rows of the {rows} the marker announces",
                        s.rows
                    ))
                } else if epoch.finished.contains(&stream.sender) {
                    // A resent stream whose first copy arrived whole: same content, ignore.
                    Ok(rows)
                } else {
                    match epoch.waiter.as_ref().map(|(senders, _)| senders) {
                        Some(peers) if !peers.contains(&stream.sender) => {
                            Err(not_a_peer(&stream.sender, &key))
                        }
                        Some(_) => merge_stream(epoch, &stream.sender, s.partials, rows),
                        None => {
                            epoch.early.insert(
                                stream.sender.clone(),
                                Received {
                                    partials: s.partials,
                                    rows,
                                },
                            );
                            epoch.finished.insert(stream.sender.clone());
                            Ok(rows)
                        }
                    }
                };
                let _ = reply.send(answer);
                answer_waiter(&mut epochs, &key, &mut collected);
            }
            InboxMsg::Collect {
                run,
                senders,
                reply,
            } => {
                // Earlier epochs and other runs of this one were abandoned.
                epochs.retain(|k, _| !k.superseded_by(&run));
                open.retain(|s, _| !s.run_key().superseded_by(&run));
                let epoch = epochs.entry(run.clone()).or_default();
                // What finished before the runner named the peers: merged if from a peer.
                for (sender, received) in std::mem::take(&mut epoch.early) {
                    epoch.finished.remove(&sender);
                    if senders.contains(&sender) {
                        // An error poisons the epoch; the runner hears it at once.
                        let _ = merge_stream(epoch, &sender, received.partials, received.rows);
                    } else {
                        tracing::warn!("{}", not_a_peer(&sender, &run));
                    }
                }
                epoch.waiter = Some((senders, reply));
                answer_waiter(&mut epochs, &run, &mut collected);
            }
            InboxMsg::Finished { run, reply } => {
                let done = epochs
                    .get(&run)
                    .map(|e| e.finished.clone())
                    .unwrap_or_default();
                let _ = reply.send(done);
            }
        }
    }
}

/// Merges a finished stream of `sender` into the run's total (a failure poisons the run).
fn merge_stream(
    epoch: &mut EpochInbox,
    sender: &str,
    partials: PlanPartials,
    rows: u64,
) -> Result<u64, String> {
    match epoch.total.partials.merge(partials) {
        Ok(()) => {
            epoch.total.rows += rows;
            epoch.finished.insert(sender.to_string());
            Ok(rows)
        }
        Err(e) => {
            let failure = format!("stream from {sender}: {e}");
            epoch.failure = Some(failure.clone());
            Err(failure)
        }
    }
}

/// Why a stream of `sender` is refused in `run`.
fn not_a_peer(sender: &str, run: &RunKey) -> String {
    format!(
        "partials from `{sender}` refused: it is not a peer of epoch {} run {}",
        run.epoch, run.run
    )
}

/// Hands the run's total to its waiter when every expected sender has finished.
fn answer_waiter(
    epochs: &mut BTreeMap<RunKey, EpochInbox>,
    run: &RunKey,
    collected: &mut Option<RunKey>,
) {
    let Some(inbox) = epochs.get_mut(run) else {
        return;
    };
    let ready = match (&inbox.failure, &inbox.waiter) {
        (Some(_), Some(_)) => true,
        (None, Some((senders, _))) => senders.is_subset(&inbox.finished),
        _ => false,
    };
    if !ready {
        return;
    }
    let Some(inbox) = epochs.remove(run) else {
        return;
    };
    let Some((_, reply)) = inbox.waiter else {
        return;
    };
    let answer = match inbox.failure {
        Some(f) => Err(f),
        None => Ok(inbox.total),
    };
    let _ = reply.send(answer);
    if collected.as_ref().is_none_or(|c| c.epoch <= run.epoch) {
        *collected = Some(run.clone());
    }
    // Older epochs can no longer be collected. Another run of this epoch may: a run the driver
    // abandoned can still complete here after a newer run's streams arrived, and those must
    // stay until that run collects (its Collect drops the older runs). So may a later round of
    // this run, whose streams may have arrived already.
    epochs.retain(|k, _| {
        k.epoch > run.epoch || (k.epoch == run.epoch && (k.run != run.run || k.round > run.round))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::partials::Partials;
    use crate::exchange::wire::{entries, BatchEncoder};
    use weir_common::query::window::Window;

    /// A batch of distinct values `values`, each in a run of its own (as if from a sender
    /// of its own), so that a batch holds one row per value.
    fn batch(values: std::ops::Range<u32>) -> RecordBatch {
        let mut p = Partials::default();
        for i in values {
            p.distinct.extend(crate::aggregate::partials::distinct_runs(
                0,
                Window { start: 0, end: 300 },
                1,
                b"g",
                &[&i.to_be_bytes()],
                16,
            ));
        }
        BatchEncoder::new(entries(PlanPartials(vec![p])))
            .next()
            .unwrap()
            .unwrap()
    }

    fn id(sender: &str, connection: u64) -> StreamId {
        StreamId {
            epoch: 3,
            run: "r1".into(),
            round: 0,
            sender: sender.into(),
            connection,
        }
    }

    /// Asks for run `run` of epoch 3 once `senders` finished; answers where it comes.
    async fn collect(
        inbox: &mpsc::Sender<InboxMsg>,
        run: &str,
        senders: &[&str],
    ) -> oneshot::Receiver<Result<Received, String>> {
        collect_round(inbox, run, 0, senders).await
    }

    async fn collect_round(
        inbox: &mpsc::Sender<InboxMsg>,
        run: &str,
        round: u32,
        senders: &[&str],
    ) -> oneshot::Receiver<Result<Received, String>> {
        let (reply, collected) = oneshot::channel();
        inbox
            .send(InboxMsg::Collect {
                run: RunKey {
                    epoch: 3,
                    run: run.into(),
                    round,
                },
                senders: senders.iter().map(|s| s.to_string()).collect(),
                reply,
            })
            .await
            .unwrap();
        collected
    }

    /// Sends one batch of distinct values `values` on `stream`.
    async fn send(inbox: &mpsc::Sender<InboxMsg>, stream: StreamId, values: std::ops::Range<u32>) {
        inbox
            .send(InboxMsg::Batch {
                stream,
                batch: batch(values),
            })
            .await
            .unwrap();
    }

    async fn end(
        inbox: &mpsc::Sender<InboxMsg>,
        stream: StreamId,
        rows: u64,
    ) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        inbox
            .send(InboxMsg::End {
                stream,
                rows,
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collects_when_every_sender_finished_and_drops_broken_streams() {
        let inbox = spawn(4, vec![Shape::for_tests()]);
        let collected = collect(&inbox, "r1", &["a", "b"]).await;
        // A's first attempt breaks half way; its second arrives whole.
        send(&inbox, id("a", 0), 0..10).await;
        inbox
            .send(InboxMsg::Abandon { stream: id("a", 0) })
            .await
            .unwrap();
        for attempt in [1, 2] {
            send(&inbox, id("a", attempt), 0..10).await;
            // The second whole copy is acknowledged and not merged twice.
            assert_eq!(end(&inbox, id("a", attempt), 10).await, Ok(10));
        }
        // B's marker announces more rows than arrived: refused.
        send(&inbox, id("b", 0), 5..15).await;
        assert!(end(&inbox, id("b", 0), 11).await.is_err());
        send(&inbox, id("b", 1), 5..15).await;
        assert_eq!(end(&inbox, id("b", 1), 10).await, Ok(10));
        let received = collected.await.unwrap().unwrap();
        assert_eq!(received.rows, 20);
        assert_eq!(received.partials.0[0].unique_distinct(), 15);
        // The epoch is gone: a straggler is told so.
        assert!(end(&inbox, id("c", 0), 0).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_run_of_an_epoch_never_sees_what_the_abandoned_run_sent() {
        let inbox = spawn(4, vec![Shape::for_tests()]);
        let stream = |run: &str| StreamId {
            epoch: 3,
            run: run.into(),
            round: 0,
            sender: "a".into(),
            connection: 0,
        };
        // Run r1 was abandoned after A's stream (10 distinct values) arrived whole.
        send(&inbox, stream("r1"), 0..10).await;
        assert_eq!(end(&inbox, stream("r1"), 10).await, Ok(10));
        // Run r2 is collected; A sends 5 values in it, and a late r1 stream arrives too.
        let collected = collect(&inbox, "r2", &["a"]).await;
        send(&inbox, stream("r2"), 100..105).await;
        assert_eq!(end(&inbox, stream("r2"), 5).await, Ok(5));
        let received = collected.await.unwrap().unwrap();
        assert_eq!(received.rows, 5);
        assert_eq!(received.partials.0[0].distinct.len(), 5);
        // Once r2 is collected, a straggler of either run is stale.
        assert!(end(&inbox, stream("r2"), 0).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_run_completing_late_keeps_the_newer_runs_streams() {
        let inbox = spawn(4, vec![Shape::for_tests()]);
        let stream = |run: &str, sender: &str| StreamId {
            epoch: 3,
            run: run.into(),
            round: 0,
            sender: sender.into(),
            connection: 0,
        };
        // This executor still waits for r1 from A and B when the driver abandons r1.
        let _abandoned = collect(&inbox, "r1", &["a", "b"]).await;
        send(&inbox, stream("r1", "a"), 0..3).await;
        assert_eq!(end(&inbox, stream("r1", "a"), 3).await, Ok(3));
        // A is fast: its r2 stream arrives before B's late r1 stream completes r1.
        send(&inbox, stream("r2", "a"), 10..17).await;
        assert_eq!(end(&inbox, stream("r2", "a"), 7).await, Ok(7));
        send(&inbox, stream("r1", "b"), 20..22).await;
        assert_eq!(end(&inbox, stream("r1", "b"), 2).await, Ok(2));
        // Now r2 is collected: A's stream is still there.
        let collected = collect(&inbox, "r2", &["a"]).await;
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), collected)
            .await
            .expect("r2 never completed: A's stream was dropped")
            .unwrap()
            .unwrap();
        assert_eq!(received.rows, 7);
        assert_eq!(received.partials.0[0].distinct.len(), 7);
    }

    /// A fast peer's second-round stream may arrive before this executor collected the first
    /// round: it is kept for the second, and neither round sees the other's partials.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_of_a_run_are_collected_apart_and_in_order() {
        let inbox = spawn(4, vec![Shape::for_tests()]);
        let stream = |round: u32| StreamId {
            round,
            ..id("a", u64::from(round))
        };
        send(&inbox, stream(0), 0..4).await;
        assert_eq!(end(&inbox, stream(0), 4).await, Ok(4));
        send(&inbox, stream(1), 10..13).await;
        assert_eq!(end(&inbox, stream(1), 3).await, Ok(3));
        let first = collect_round(&inbox, "r1", 0, &["a"]).await;
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.partials.0[0].distinct.len(), 4);
        let second = collect_round(&inbox, "r1", 1, &["a"]).await;
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), second)
            .await
            .expect("the second round's early stream was dropped")
            .unwrap()
            .unwrap();
        assert_eq!(second.partials.0[0].distinct.len(), 3);
        // Both rounds are done: a resent stream of either is stale.
        assert!(end(&inbox, stream(0), 0).await.is_err());
        assert!(end(&inbox, stream(1), 0).await.is_err());
        // The driver lost the epoch's answers and runs it again: the new run's first round
        // is taken, though this executor collected both rounds of the old run.
        let rerun = StreamId {
            run: "r2".into(),
            ..id("a", 9)
        };
        send(&inbox, rerun.clone(), 20..22).await;
        assert_eq!(end(&inbox, rerun, 2).await, Ok(2));
        let again = collect_round(&inbox, "r2", 0, &["a"]).await;
        assert_eq!(
            again.await.unwrap().unwrap().partials.0[0].distinct.len(),
            2
        );
    }

    /// Partials are taken only from the run's peers: a stream from anyone else is refused once
    /// the peers are known, and dropped (never merged) when it finished before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partials_from_a_sender_outside_the_run_are_never_merged() {
        let inbox = spawn(4, vec![Shape::for_tests()]);
        // A stranger finishes before this executor's runner names the peers; so does A.
        send(&inbox, id("stranger", 0), 0..10).await;
        assert_eq!(end(&inbox, id("stranger", 0), 10).await, Ok(10));
        send(&inbox, id("a", 0), 100..103).await;
        assert_eq!(end(&inbox, id("a", 0), 3).await, Ok(3));
        let collected = collect(&inbox, "r1", &["a", "b"]).await;
        // Now the peers are known: another stranger is refused outright.
        send(&inbox, id("intruder", 0), 0..10).await;
        let refused = end(&inbox, id("intruder", 0), 10).await.unwrap_err();
        assert!(refused.contains("not a peer"), "{refused}");
        send(&inbox, id("b", 0), 200..202).await;
        assert_eq!(end(&inbox, id("b", 0), 2).await, Ok(2));
        let received = collected.await.unwrap().unwrap();
        assert_eq!(received.rows, 5);
        assert_eq!(received.partials.0[0].unique_distinct(), 5);
    }
}
