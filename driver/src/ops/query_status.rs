//! What the admin API and the dashboard read about the query: its state (written by the
//! coordinator as it goes), the progress of recent epochs (a ring of the last 100, and a
//! broadcast of each new one) and the last hour of samples and events (`timeline`). Watch and
//! broadcast channels and short locks, so readers never hold up the coordinator.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use weir_common::checkpoint::Assignment;
use weir_proto::admin::{QueryProgress, QueryState};

use crate::ops::timeline::{Sample, Timeline};

/// Epochs of progress the driver keeps (Spark keeps 100 too).
pub const RECENT_PROGRESS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: QueryState,
    pub message: String,
    pub last_epoch: Option<u64>,
    pub current_epoch: Option<u64>,
    /// The assignment of the last epoch run (or being run).
    pub assignment: Vec<Assignment>,
    /// Registered executors beyond the target, to be told to exit.
    pub retiring: Vec<String>,
    /// Executors told to exit since the last epoch ran (the assignment may still name them).
    pub retired: Vec<String>,
    /// The watermark in force for the next epoch.
    pub watermark_micros: Option<i64>,
}

/// The coordinator's side.
pub struct StatusBoard {
    status: watch::Sender<Status>,
    history: watch::Sender<Arc<VecDeque<Arc<QueryProgress>>>>,
    events: broadcast::Sender<Arc<QueryProgress>>,
    pub timeline: Timeline,
    /// Executors the last epoch started with (a change is a rescale).
    started_executors: std::sync::atomic::AtomicUsize,
}

/// The admin service's side.
#[derive(Clone)]
pub struct StatusReader {
    pub status: watch::Receiver<Status>,
    pub history: watch::Receiver<Arc<VecDeque<Arc<QueryProgress>>>>,
    events: broadcast::Sender<Arc<QueryProgress>>,
    pub timeline: Timeline,
}

impl StatusBoard {
    pub fn new() -> (Self, StatusReader) {
        Self::with_timeline(Timeline::default())
    }

    /// A board whose samples and events go to `timeline` (the alerts' events go there too).
    pub fn with_timeline(timeline: Timeline) -> (Self, StatusReader) {
        let (status, status_rx) = watch::channel(Status {
            state: QueryState::Recovering,
            message: "reading the checkpoint".into(),
            last_epoch: None,
            current_epoch: None,
            assignment: Vec::new(),
            retiring: Vec::new(),
            retired: Vec::new(),
            watermark_micros: None,
        });
        let (history, history_rx) = watch::channel(Arc::new(VecDeque::new()));
        let (events, _) = broadcast::channel(RECENT_PROGRESS);
        let reader = StatusReader {
            status: status_rx,
            history: history_rx,
            events: events.clone(),
            timeline: timeline.clone(),
        };
        (
            Self {
                status,
                history,
                events,
                timeline,
                started_executors: Default::default(),
            },
            reader,
        )
    }

    /// Sets the state and what it means now.
    pub fn set(&self, state: QueryState, message: impl Into<String>) {
        let message = message.into();
        self.status.send_if_modified(|s| {
            let changed = s.state != state || s.message != message;
            s.state = state;
            s.message = message;
            changed
        });
    }

    pub fn state(&self) -> QueryState {
        self.status.borrow().state
    }

    /// An epoch starts with `assignment`.
    pub fn epoch_started(&self, epoch: u64, assignment: &[Assignment]) {
        // The executors of the last epoch started, not of the last committed: epochs run back
        // to back commit N after N + 1 has started.
        let before = self
            .started_executors
            .swap(assignment.len(), std::sync::atomic::Ordering::Relaxed);
        if before > 0 && before != assignment.len() {
            self.timeline.add_event(
                "rescaled",
                &format!(
                    "epoch {epoch} runs on {} executors (was {before})",
                    assignment.len()
                ),
                Some(epoch),
            );
        }
        self.status.send_modify(|s| {
            s.state = QueryState::Active;
            s.message = format!("running epoch {epoch}");
            s.current_epoch = Some(epoch);
            s.assignment = assignment.to_vec();
            s.retired
                .retain(|id| assignment.iter().any(|a| a.executor_id == *id));
        });
    }

    /// Executors beyond the target, to be retired.
    pub fn retiring(&self, ids: Vec<String>) {
        self.status.send_if_modified(|s| {
            let changed = s.retiring != ids;
            s.retiring = ids;
            changed
        });
    }

    /// Executors told to exit.
    pub fn retired(&self, ids: Vec<String>) {
        self.status.send_modify(|s| {
            s.retiring.retain(|id| !ids.contains(id));
            s.retired.extend(ids);
        });
    }

    /// The last decided epoch and the watermark after it, known at recovery.
    pub fn recovered(
        &self,
        epoch: Option<u64>,
        assignment: &[Assignment],
        watermark_micros: Option<i64>,
    ) {
        // The first epoch of this driver on another count is a rescale too.
        self.started_executors
            .store(assignment.len(), std::sync::atomic::Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.last_epoch = epoch;
            s.assignment = assignment.to_vec();
            s.watermark_micros = watermark_micros;
        });
    }

    /// An epoch is committed: its progress joins the ring, the timeline and goes to the
    /// watchers; `ran_with_micros` is the watermark it ran with, `watermark_micros` the one it
    /// leaves for the next epoch, `committed_at_ms` when it committed (it may be reported an
    /// epoch later).
    pub fn committed(
        &self,
        progress: QueryProgress,
        assignment: &[Assignment],
        ran_with_micros: Option<i64>,
        watermark_micros: Option<i64>,
        committed_at_ms: i64,
    ) {
        let epoch = progress.batch_id;
        self.timeline
            .add_sample(Sample::of(&progress, ran_with_micros, committed_at_ms));
        let progress = Arc::new(progress);
        self.history.send_modify(|h| {
            let ring = Arc::make_mut(h);
            if ring.len() == RECENT_PROGRESS {
                ring.pop_front();
            }
            ring.push_back(progress.clone());
        });
        // No watcher is fine.
        let _ = self.events.send(progress);
        self.status.send_modify(|s| {
            s.last_epoch = Some(epoch);
            s.current_epoch = None;
            s.assignment = assignment.to_vec();
            s.watermark_micros = watermark_micros;
        });
    }
}

impl StatusReader {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<QueryProgress>> {
        self.events.subscribe()
    }

    pub fn last(&self) -> Option<Arc<QueryProgress>> {
        self.history.borrow().back().cloned()
    }
}

#[cfg(test)]
mod tests {
    use weir_common::query::keygroup::KeyGroups;

    use super::*;

    fn progress(epoch: u64) -> QueryProgress {
        QueryProgress {
            batch_id: epoch,
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_last_hundred_and_watchers_see_each() {
        let (board, reader) = StatusBoard::new();
        let mut watch = reader.subscribe();
        for epoch in 0..150 {
            board.committed(progress(epoch), &[], None, None, 0);
        }
        let history = reader.history.borrow().clone();
        assert_eq!(history.len(), RECENT_PROGRESS);
        assert_eq!(history.front().unwrap().batch_id, 50);
        assert_eq!(reader.last().unwrap().batch_id, 149);
        assert_eq!(reader.status.borrow().last_epoch, Some(149));
        // A slow watcher skips the oldest (it is told how many) and gets the rest in order.
        let skipped = match watch.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => n,
            other => panic!("expected the watcher to have lagged, got {other:?}"),
        };
        assert!(skipped <= 50, "{skipped}");
        let rest: Vec<u64> = std::iter::from_fn(|| watch.try_recv().ok())
            .map(|p| p.batch_id)
            .collect();
        assert_eq!(rest, (skipped..150).collect::<Vec<_>>());
    }

    fn on(executors: usize) -> Vec<Assignment> {
        (0..executors)
            .map(|i| Assignment {
                executor_id: format!("executor-{i}"),
                partitions: Vec::new(),
                key_groups: KeyGroups::from_ranges([(i as u32, i as u32 + 1)]),
            })
            .collect()
    }

    fn rescales(reader: &StatusReader) -> Vec<String> {
        reader
            .timeline
            .events()
            .into_iter()
            .filter(|e| e.kind == "rescaled")
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn the_first_epoch_after_a_restart_on_another_count_is_a_rescale() {
        let (board, reader) = StatusBoard::new();
        board.recovered(Some(4), &on(2), None);
        board.epoch_started(5, &on(2));
        assert!(rescales(&reader).is_empty());
        let (board, reader) = StatusBoard::new();
        board.recovered(Some(4), &on(2), None);
        board.epoch_started(5, &on(3));
        assert_eq!(rescales(&reader), ["epoch 5 runs on 3 executors (was 2)"]);
        // A driver that starts on an empty checkpoint has nothing to compare with.
        let (board, reader) = StatusBoard::new();
        board.epoch_started(0, &on(3));
        assert!(rescales(&reader).is_empty());
    }
}
