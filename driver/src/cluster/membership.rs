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
    /// The process's random incarnation: another process under the same id has another.
    pub incarnation: u64,
    pub registered_at: Instant,
    pub last_heartbeat: Instant,
    /// It said it is stopping: no later epoch runs on it, and it is retired like an executor
    /// beyond the target.
    pub leaving: bool,
    /// It can run epochs: it has opened its state store, input and tables since it registered
    /// (it needs the job the registration answers for that). No epoch is assigned to it before.
    pub ready: bool,
    /// The exchange format it declared (0 when it predates the field): its peers send it
    /// what it reads.
    pub exchange_format: u32,
}

pub enum MembershipMsg {
    /// Adds an executor, or takes its id over from the incarnation `replaces` (which the caller
    /// found no longer answers). Answers the member that holds the id instead when it is
    /// another incarnation than `replaces`. `ready`: it can run epochs now (else a heartbeat
    /// says when).
    Register {
        id: String,
        address: String,
        incarnation: u64,
        replaces: Option<u64>,
        ready: bool,
        exchange_format: u32,
        reply: oneshot::Sender<Result<(), Member>>,
    },
    /// Answers whether the executor is a member under that incarnation (its beat counts);
    /// `ready` makes it ready (a beat never makes it unready: an executor that registered
    /// ready may predate the field).
    Heartbeat {
        id: String,
        incarnation: u64,
        ready: bool,
        reply: oneshot::Sender<bool>,
    },
    /// The executor under that incarnation is stopping; answers whether it is a member.
    Leave {
        id: String,
        incarnation: u64,
        reply: oneshot::Sender<bool>,
    },
    /// The member under an id, if any.
    Get {
        id: String,
        reply: oneshot::Sender<Option<Member>>,
    },
    /// The executor at `address` is taken out: it `failed` and must register again (a
    /// restarted one already did, from another address, and stays), or it was told to exit
    /// (the target went below the registered count).
    Remove {
        id: String,
        address: String,
        failed: bool,
    },
    /// The table as it is now, last heartbeats included (the watch changes on joins, readiness
    /// and leaves only).
    List { reply: oneshot::Sender<Vec<Member>> },
}

/// An executor not heard from for this long is taken out of the membership.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// The member under `id` when it is that incarnation (another process's calls do not count).
fn incarnation_of<'a>(
    table: &'a mut BTreeMap<String, Member>,
    id: &str,
    incarnation: u64,
) -> Option<&'a mut Member> {
    table.get_mut(id).filter(|m| m.incarnation == incarnation)
}

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
            MembershipMsg::Register {
                id,
                address,
                incarnation,
                replaces,
                ready,
                exchange_format,
                reply,
            } => {
                if let Some(held) = table.get(&id) {
                    if held.incarnation != incarnation && Some(held.incarnation) != replaces {
                        let _ = reply.send(Err(held.clone()));
                        continue;
                    }
                    if held.incarnation != incarnation {
                        tracing::warn!(executor = %id, old = %held.address, new = %address,
                            "executor id taken over: its previous process no longer answers");
                    }
                }
                let now = Instant::now();
                match ready {
                    true => tracing::info!(executor = %id, %address, "executor registered"),
                    false => tracing::info!(executor = %id, %address,
                        "executor registered; it joins once it says it is ready"),
                }
                table.insert(
                    id.clone(),
                    Member {
                        id,
                        address,
                        incarnation,
                        registered_at: now,
                        last_heartbeat: now,
                        leaving: false,
                        ready,
                        exchange_format,
                    },
                );
                members.send_replace(table.values().cloned().collect());
                let _ = reply.send(Ok(()));
            }
            MembershipMsg::Heartbeat {
                id,
                incarnation,
                ready,
                reply,
            } => {
                let member = incarnation_of(&mut table, &id, incarnation);
                let known = member.is_some();
                let mut joined = false;
                if let Some(m) = member {
                    m.last_heartbeat = Instant::now();
                    joined = ready && !m.ready;
                    m.ready |= ready;
                }
                if joined {
                    tracing::info!(executor = %id, "executor ready");
                    members.send_replace(table.values().cloned().collect());
                }
                let _ = reply.send(known);
            }
            MembershipMsg::Leave {
                id,
                incarnation,
                reply,
            } => {
                let member = incarnation_of(&mut table, &id, incarnation);
                let known = member.is_some();
                if let Some(m) = member.filter(|m| !m.leaving) {
                    tracing::info!(executor = %id, "executor stopping: no later epoch runs on it");
                    m.leaving = true;
                }
                if known {
                    members.send_replace(table.values().cloned().collect());
                }
                let _ = reply.send(known);
            }
            MembershipMsg::Get { id, reply } => {
                let _ = reply.send(table.get(&id).cloned());
            }
            MembershipMsg::Remove {
                id,
                address,
                failed,
            } => {
                if table.get(&id).is_some_and(|m| m.address == address) {
                    if failed {
                        tracing::warn!(executor = %id, "executor failed; it must register again");
                    }
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

    async fn register_as(
        tx: &mpsc::Sender<MembershipMsg>,
        id: &str,
        incarnation: u64,
        replaces: Option<u64>,
    ) -> Result<(), Member> {
        register_with(tx, id, incarnation, replaces, true).await
    }

    async fn register_with(
        tx: &mpsc::Sender<MembershipMsg>,
        id: &str,
        incarnation: u64,
        replaces: Option<u64>,
        ready: bool,
    ) -> Result<(), Member> {
        let (reply, done) = oneshot::channel();
        tx.send(MembershipMsg::Register {
            id: id.into(),
            address: format!("http://{id}/{incarnation}"),
            incarnation,
            replaces,
            ready,
            exchange_format: 1,
            reply,
        })
        .await
        .unwrap();
        done.await.unwrap()
    }

    async fn register(tx: &mpsc::Sender<MembershipMsg>, id: &str) {
        register_as(tx, id, 1, None).await.unwrap();
    }

    async fn beat(tx: &mpsc::Sender<MembershipMsg>, id: &str, incarnation: u64) -> bool {
        beat_with(tx, id, incarnation, true).await
    }

    async fn beat_with(
        tx: &mpsc::Sender<MembershipMsg>,
        id: &str,
        incarnation: u64,
        ready: bool,
    ) -> bool {
        let (reply, known) = oneshot::channel();
        tx.send(MembershipMsg::Heartbeat {
            id: id.into(),
            incarnation,
            ready,
            reply,
        })
        .await
        .unwrap();
        known.await.unwrap()
    }

    fn readiness(members: &mut watch::Receiver<Vec<Member>>) -> Vec<(String, bool)> {
        members
            .borrow_and_update()
            .iter()
            .map(|m| (m.id.clone(), m.ready))
            .collect()
    }

    /// An executor that registers preparing is a member, not ready, until a beat of its own
    /// incarnation says it is ready; that beat changes the watch, and no later beat makes it
    /// unready. One that registers ready (registering again after a driver restart) is ready
    /// at once.
    #[tokio::test]
    async fn a_preparing_executor_is_ready_once_a_beat_says_so() {
        let (tx, rx) = mpsc::channel(8);
        let (members_tx, mut members) = watch::channel(Vec::new());
        tokio::spawn(run(rx, members_tx, Duration::from_secs(60)));
        register_with(&tx, "a", 1, None, false).await.unwrap();
        register(&tx, "b").await;
        assert_eq!(
            readiness(&mut members),
            vec![("a".into(), false), ("b".into(), true)]
        );
        // What each declared it reads comes with it (its peers are sent that).
        assert!(members.borrow().iter().all(|m| m.exchange_format == 1));
        assert!(beat_with(&tx, "a", 1, false).await);
        assert!(
            !members.has_changed().unwrap(),
            "a beat alone changes nothing"
        );
        assert!(
            !beat_with(&tx, "a", 2, true).await,
            "another incarnation's beat does not count"
        );
        assert!(!members.has_changed().unwrap());
        assert!(beat_with(&tx, "a", 1, true).await);
        assert!(members.has_changed().unwrap());
        assert_eq!(
            readiness(&mut members),
            vec![("a".into(), true), ("b".into(), true)]
        );
        assert!(beat_with(&tx, "a", 1, false).await);
        assert!(!members.has_changed().unwrap());
        assert_eq!(readiness(&mut members)[0], ("a".into(), true));
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
            assert!(beat(&tx, "a", 1).await);
        }
        let ids: Vec<String> = members.borrow().iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec!["a".to_string()]);
        assert!(
            !beat(&tx, "b", 1).await,
            "a removed executor must register again"
        );
        // A failed executor is removed, unless it already came back from another address.
        tx.send(MembershipMsg::Remove {
            id: "a".into(),
            address: "http://elsewhere".into(),
            failed: true,
        })
        .await
        .unwrap();
        register(&tx, "b").await;
        assert_eq!(members.borrow_and_update().len(), 2);
        tx.send(MembershipMsg::Remove {
            id: "a".into(),
            address: "http://a/1".into(),
            failed: true,
        })
        .await
        .unwrap();
        register(&tx, "c").await;
        let ids: Vec<String> = members.borrow().iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec!["b".to_string(), "c".to_string()]);
    }

    /// A live executor's id cannot be taken: a second incarnation is refused unless the
    /// caller found the holder no longer answers, and the replaced one's beats stop counting.
    #[tokio::test]
    async fn a_second_incarnation_takes_an_id_only_from_one_that_stopped() {
        let (tx, rx) = mpsc::channel(8);
        let (members_tx, members) = watch::channel(Vec::new());
        tokio::spawn(run(rx, members_tx, Duration::from_secs(60)));
        register_as(&tx, "a", 1, None).await.unwrap();
        let held = register_as(&tx, "a", 2, None).await.unwrap_err();
        assert_eq!((held.id.as_str(), held.incarnation), ("a", 1));
        assert!(register_as(&tx, "a", 2, Some(7)).await.is_err());
        // The same process registering again (the driver restarted) keeps its id.
        register_as(&tx, "a", 1, None).await.unwrap();
        assert!(beat(&tx, "a", 1).await);
        assert!(!beat(&tx, "a", 2).await, "an impostor's beats do not count");
        register_as(&tx, "a", 2, Some(1)).await.unwrap();
        assert!(
            !beat(&tx, "a", 1).await,
            "the replaced process must register again"
        );
        assert!(beat(&tx, "a", 2).await);
        let now = members.borrow().clone();
        assert_eq!(now.len(), 1);
        assert_eq!(
            (now[0].incarnation, now[0].address.as_str()),
            (2, "http://a/2")
        );
    }

    /// A stopping executor stays a member, marked leaving, until it is retired or goes quiet;
    /// another incarnation cannot mark it.
    #[tokio::test]
    async fn a_stopping_executor_is_marked_leaving() {
        let (tx, rx) = mpsc::channel(8);
        let (members_tx, mut members) = watch::channel(Vec::new());
        tokio::spawn(run(rx, members_tx, Duration::from_secs(60)));
        register(&tx, "a").await;
        register(&tx, "b").await;
        members.borrow_and_update();
        let leave = |incarnation| {
            let tx = tx.clone();
            async move {
                let (reply, known) = oneshot::channel();
                tx.send(MembershipMsg::Leave {
                    id: "a".into(),
                    incarnation,
                    reply,
                })
                .await
                .unwrap();
                known.await.unwrap()
            }
        };
        assert!(!leave(9).await);
        assert!(!members.has_changed().unwrap());
        assert!(leave(1).await);
        let now = members.borrow_and_update().clone();
        let leaving: Vec<(&str, bool)> = now.iter().map(|m| (m.id.as_str(), m.leaving)).collect();
        assert_eq!(leaving, vec![("a", true), ("b", false)]);
    }
}
