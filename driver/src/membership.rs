//! Membership: which executors are registered, where to reach them, when they were last heard.
//! An actor owns the table; the gRPC service and the coordinator talk to it through messages
//! and a watch channel of the current members.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

/// A registered executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub address: String,
    pub registered_at: Instant,
    pub last_heartbeat: Instant,
}

pub enum MembershipMsg {
    Register {
        id: String,
        address: String,
        reply: oneshot::Sender<()>,
    },
    Heartbeat {
        id: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Runs the membership actor until every sender is gone.
pub async fn run(mut inbox: mpsc::Receiver<MembershipMsg>, members: watch::Sender<Vec<Member>>) {
    let mut table: BTreeMap<String, Member> = BTreeMap::new();
    while let Some(msg) = inbox.recv().await {
        match msg {
            MembershipMsg::Register { id, address, reply } => {
                let now = Instant::now();
                tracing::info!(executor = %id, %address, "executor registered");
                table.insert(
                    id.clone(),
                    Member {
                        id,
                        address,
                        registered_at: now,
                        last_heartbeat: now,
                    },
                );
                members.send_replace(table.values().cloned().collect());
                let _ = reply.send(());
            }
            MembershipMsg::Heartbeat { id, reply } => {
                let known = match table.get_mut(&id) {
                    Some(m) => {
                        m.last_heartbeat = Instant::now();
                        true
                    }
                    None => false,
                };
                let _ = reply.send(known);
            }
        }
    }
}
