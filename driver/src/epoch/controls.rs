//! How the admin API steers the coordinator: pause and stop are flags it reads between epochs,
//! a checkpoint request is a message it answers once the epoch it ran is committed, a compaction
//! request one it answers once every table's pass is done.

use tokio::sync::{mpsc, oneshot, watch};

/// What a checkpoint request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// The last committed epoch after the request.
    pub epoch: Option<u64>,
    /// Whether an epoch ran for it (there may be nothing to read and no window to close).
    pub ran: bool,
    pub delta_version: Option<u64>,
}

pub type CheckpointReply = oneshot::Sender<Result<CheckpointOutcome, String>>;

pub type CompactReply = oneshot::Sender<Result<Vec<weir_proto::admin::TableCompaction>, String>>;

/// The admin service's side.
#[derive(Clone)]
pub struct Controls {
    pub paused: watch::Sender<bool>,
    pub stop: watch::Sender<bool>,
    pub checkpoint: mpsc::Sender<CheckpointReply>,
    pub compact: mpsc::Sender<CompactReply>,
}

/// The coordinator's side.
pub struct ControlInbox {
    pub paused: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
    pub checkpoint: mpsc::Receiver<CheckpointReply>,
    pub compact: mpsc::Receiver<CompactReply>,
}

/// Controls whose stop flag also turns on when `external` does (SIGTERM).
pub fn controls(mut external: watch::Receiver<bool>) -> (Controls, ControlInbox) {
    let (paused_tx, paused_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (checkpoint_tx, checkpoint_rx) = mpsc::channel(16);
    let (compact_tx, compact_rx) = mpsc::channel(16);
    let forward = stop_tx.clone();
    tokio::spawn(async move {
        if external.wait_for(|s| *s).await.is_ok() {
            forward.send_replace(true);
        }
    });
    (
        Controls {
            paused: paused_tx,
            stop: stop_tx,
            checkpoint: checkpoint_tx,
            compact: compact_tx,
        },
        ControlInbox {
            paused: paused_rx,
            stop: stop_rx,
            checkpoint: checkpoint_rx,
            compact: compact_rx,
        },
    )
}
