//! Membership: which executors are registered, where to reach them, when they were last heard.
//! An actor owns the table; the gRPC service and the coordinator talk to it through messages
//! and a watch channel of the current members.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

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
    /// The executor at `address` failed: it must register again (a restarted one already did,
    /// from another address, and stays).
    Remove { id: String, address: String },
    /// The table as it is now, last heartbeats included (the watch changes on joins and leaves
    /// only).
    List { reply: oneshot::Sender<Vec<Member>> },
}

/// An executor not heard from for this long is taken out of the membership.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the membership actor until every sender is gone.
pub async fn run(
    mut inbox: mpsc::Receiver<MembershipMsg>,
    members: watch::Sender<Vec<Member>>,
    timeout: Duration,
) {
    let mut table: BTreeMap<String, Member> = BTreeMap::new();
    let mut sweep = tokio::time::interval(timeout / 4);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            msg = inbox.recv() => match msg {
                Some(m) => m,
                None => break,
            },
            _ = sweep.tick() => {
                let before = table.len();
                table.retain(|id, m| {
                    let alive = m.last_heartbeat.elapsed() < timeout;
                    if !alive {
                        tracing::warn!(executor = %id, "no heartbeat for {timeout:?}; executor removed");
                    }
                    alive
                });
                if table.len() != before {
                    members.send_replace(table.values().cloned().collect());
                }
                continue;
            }
        };
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
            MembershipMsg::Remove { id, address } => {
                if table.get(&id).is_some_and(|m| m.address == address) {
                    tracing::warn!(executor = %id, "executor failed; it must register again");
                    table.remove(&id);
                    members.send_replace(table.values().cloned().collect());
                }
            }
            MembershipMsg::List { reply } => {
                let _ = reply.send(table.values().cloned().collect());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn register(tx: &mpsc::Sender<MembershipMsg>, id: &str) {
        let (reply, done) = oneshot::channel();
        tx.send(MembershipMsg::Register {
            id: id.into(),
            address: format!("http://{id}"),
            reply,
        })
        .await
        .unwrap();
        done.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_executors_leave_and_beating_ones_stay() {
        let (tx, rx) = mpsc::channel(8);
        let (members_tx, mut members) = watch::channel(Vec::new());
        tokio::spawn(run(rx, members_tx, Duration::from_secs(4)));
        register(&tx, "a").await;
        register(&tx, "b").await;
        assert_eq!(members.borrow_and_update().len(), 2);
        // "a" keeps beating through 8 s of (paused, auto-advanced) time; "b" stays silent.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (reply, known) = oneshot::channel();
            tx.send(MembershipMsg::Heartbeat {
                id: "a".into(),
                reply,
            })
            .await
            .unwrap();
            assert!(known.await.unwrap());
        }
        let ids: Vec<String> = members.borrow().iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec!["a".to_string()]);
        let (reply, known) = oneshot::channel();
        tx.send(MembershipMsg::Heartbeat {
            id: "b".into(),
            reply,
        })
        .await
        .unwrap();
        assert!(
            !known.await.unwrap(),
            "a removed executor must register again"
        );
        // A failed executor is removed, unless it already came back from another address.
        tx.send(MembershipMsg::Remove {
            id: "a".into(),
            address: "http://elsewhere".into(),
        })
        .await
        .unwrap();
        register(&tx, "b").await;
        assert_eq!(members.borrow_and_update().len(), 2);
        tx.send(MembershipMsg::Remove {
            id: "a".into(),
            address: "http://a".into(),
        })
        .await
        .unwrap();
        register(&tx, "c").await;
        let ids: Vec<String> = members.borrow().iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec!["b".to_string(), "c".to_string()]);
    }
}
