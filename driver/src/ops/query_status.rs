//! What the admin API reads about the query: its state (written by the coordinator as it goes)
//! and the progress of recent epochs (a ring of the last 100, and a broadcast of each new one).
//! Watch and broadcast channels, so readers never hold up the coordinator.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use weir_common::checkpoint::Assignment;
use weir_proto::admin::{QueryProgress, QueryState};

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
}

/// The coordinator's side.
pub struct StatusBoard {
    status: watch::Sender<Status>,
    history: watch::Sender<Arc<VecDeque<Arc<QueryProgress>>>>,
    events: broadcast::Sender<Arc<QueryProgress>>,
}

/// The admin service's side.
#[derive(Clone)]
pub struct StatusReader {
    pub status: watch::Receiver<Status>,
    pub history: watch::Receiver<Arc<VecDeque<Arc<QueryProgress>>>>,
    events: broadcast::Sender<Arc<QueryProgress>>,
}

impl StatusBoard {
    pub fn new() -> (Self, StatusReader) {
        let (status, status_rx) = watch::channel(Status {
            state: QueryState::Recovering,
            message: "reading the checkpoint".into(),
            last_epoch: None,
            current_epoch: None,
            assignment: Vec::new(),
            retiring: Vec::new(),
            retired: Vec::new(),
        });
        let (history, history_rx) = watch::channel(Arc::new(VecDeque::new()));
        let (events, _) = broadcast::channel(RECENT_PROGRESS);
        let reader = StatusReader {
            status: status_rx,
            history: history_rx,
            events: events.clone(),
        };
        (
            Self {
                status,
                history,
                events,
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

    /// The last decided epoch, known at recovery.
    pub fn recovered(&self, epoch: Option<u64>, assignment: &[Assignment]) {
        self.status.send_modify(|s| {
            s.last_epoch = epoch;
            s.assignment = assignment.to_vec();
        });
    }

    /// An epoch is committed: its progress joins the ring and goes to the watchers.
    pub fn committed(&self, progress: QueryProgress, assignment: &[Assignment]) {
        let epoch = progress.batch_id;
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
            board.committed(progress(epoch), &[]);
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
}
