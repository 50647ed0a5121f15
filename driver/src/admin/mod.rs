//! The driver's admin gRPC service (`proto/admin.proto`): reads come from the status board
//! and the membership actor, changes go to the coordinator through its controls. Handlers
//! only translate.

pub mod auth;

use std::pin::Pin;
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};
use weir_proto::admin::admin_server::Admin;
use weir_proto::admin::{
    Autoscale, CheckpointNowResponse, CompactResponse, ControlRequest, ExecutorInfo, ExecutorState,
    ListExecutorsRequest, ListExecutorsResponse, ListQueriesRequest, ListQueriesResponse,
    ProgressRequest, QueryProgress, QueryState, QueryStatus, RecentProgressResponse, ScaleRequest,
};

use crate::cluster::membership::{Member, MembershipMsg};
use crate::cluster::scale::Scaler;
use crate::epoch::controls::Controls;
use crate::ops::progress::{key_group_ranges, rfc3339, QueryIdentity};
use crate::ops::query_status::StatusReader;
pub use auth::AdminToken;

/// What the admin service shows that does not change while the driver runs.
#[derive(Debug, Clone)]
pub struct QueryFacts {
    pub identity: QueryIdentity,
    pub trigger: String,
    pub checkpoint_location: String,
    pub started_at_micros: i64,
}

pub struct AdminService {
    pub facts: QueryFacts,
    pub status: StatusReader,
    pub controls: Controls,
    pub scaler: Scaler,
    pub membership: mpsc::Sender<MembershipMsg>,
    pub members: watch::Receiver<Vec<Member>>,
    pub token: AdminToken,
    /// Turns true when the driver is done: watch streams end.
    pub closing: watch::Receiver<bool>,
}

fn gone() -> Status {
    Status::unavailable("the driver is shutting down")
}

/// Wall-clock time of a tokio instant in the past.
fn wall(instant: tokio::time::Instant) -> Option<String> {
    let at = SystemTime::now().checked_sub(instant.elapsed())?;
    let micros = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_micros();
    rfc3339(i64::try_from(micros).ok()?)
}

impl AdminService {
    fn check_query(&self, query: &str) -> Result<(), Status> {
        let id = &self.facts.identity;
        if query.is_empty() || query == id.name || query == id.id {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "this driver runs query `{}` ({}), not `{query}`",
                id.name, id.id
            )))
        }
    }

    fn query_status(&self) -> QueryStatus {
        let s = self.status.status.borrow().clone();
        let paused = *self.controls.paused.borrow();
        let stopping = *self.controls.stop.borrow();
        let (state, message) = match s.state {
            QueryState::Active if stopping => (
                QueryState::Stopping,
                "stopping after the epoch in progress".to_string(),
            ),
            QueryState::Active if paused => (s.state, format!("{}; pausing after it", s.message)),
            QueryState::Idle
            | QueryState::Paused
            | QueryState::Recovering
            | QueryState::WaitingForExecutors
                if stopping =>
            {
                (QueryState::Stopping, "stopping".to_string())
            }
            // The coordinator takes the pause at once when it is between epochs.
            QueryState::Idle if paused => (QueryState::Paused, "paused".to_string()),
            _ => (s.state, s.message),
        };
        let id = &self.facts.identity;
        let target = self.scaler.current();
        QueryStatus {
            id: id.id.clone(),
            run_id: id.run_id.clone(),
            name: id.name.clone(),
            state: state as i32,
            message,
            last_epoch: s.last_epoch,
            current_epoch: s.current_epoch,
            executors_registered: self.members.borrow().len() as u32,
            executors_target: target.executors as u32,
            executors_min: self.scaler.bounds.min as u32,
            executors_max: self.scaler.bounds.max as u32,
            executors_active: s.assignment.len() as u32,
            target_reason: target.reason,
            target_set_at: rfc3339(target.at_micros).unwrap_or_default(),
            autoscale: self.autoscale_status(),
            trigger: self.facts.trigger.clone(),
            checkpoint_location: self.facts.checkpoint_location.clone(),
            output_table: id
                .queries
                .iter()
                .map(|q| q.output_url.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            started_at: rfc3339(self.facts.started_at_micros).unwrap_or_default(),
            watermark: s.watermark_micros.and_then(rfc3339),
        }
    }

    fn autoscale_status(&self) -> Option<Autoscale> {
        let spec = self.scaler.autoscale?;
        let last = self.scaler.recommendation();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Some(Autoscale {
            min: spec.min as u32,
            max: spec.max as u32,
            target_lag_ms: ms(spec.target_lag),
            target_utilization: spec.target_utilization,
            scale_up_after_ms: ms(spec.scale_up_after),
            scale_down_after_ms: ms(spec.scale_down_after),
            recommended: last.as_ref().map_or(0, |r| r.executors as u32),
            recommended_at: last
                .as_ref()
                .and_then(|r| rfc3339(r.at_micros))
                .unwrap_or_default(),
            backlog_rows: last.as_ref().map_or(0.0, |r| r.backlog_rows),
            input_rows_per_second: last.as_ref().map_or(0.0, |r| r.input_rows_per_second),
            rows_per_executor_second: last
                .as_ref()
                .and_then(|r| r.rows_per_executor_second)
                .unwrap_or(0.0),
        })
    }

    /// A call that changes the query: it needs the token, names this query, and (unless it is
    /// a stop) finds the query still running.
    fn allow_change(
        &self,
        request: &Request<ControlRequest>,
        stopping_is_fine: bool,
    ) -> Result<(), Status> {
        self.token.check(request)?;
        self.check_query(&request.get_ref().query)?;
        if stopping_is_fine {
            Ok(())
        } else {
            self.refuse_when_finished()
        }
    }

    fn refuse_when_finished(&self) -> Result<(), Status> {
        let state = self.status.status.borrow().state;
        if matches!(state, QueryState::Stopped | QueryState::Failed) || *self.controls.stop.borrow()
        {
            return Err(Status::failed_precondition(
                "the query is stopping or has stopped",
            ));
        }
        Ok(())
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<QueryProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_queries(
        &self,
        request: Request<ListQueriesRequest>,
    ) -> Result<Response<ListQueriesResponse>, Status> {
        self.token.check_read(&request)?;
        Ok(Response::new(ListQueriesResponse {
            queries: vec![self.query_status()],
        }))
    }

    async fn get_progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<QueryProgress>, Status> {
        self.token.check_read(&request)?;
        self.check_query(&request.get_ref().query)?;
        match self.status.last() {
            Some(p) => Ok(Response::new((*p).clone())),
            None => Err(Status::not_found(
                "no epoch has been committed since this driver started",
            )),
        }
    }

    async fn recent_progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<RecentProgressResponse>, Status> {
        self.token.check_read(&request)?;
        let req = request.into_inner();
        self.check_query(&req.query)?;
        let history = self.status.history.borrow().clone();
        let skip = match req.limit as usize {
            0 => 0,
            n => history.len().saturating_sub(n),
        };
        Ok(Response::new(RecentProgressResponse {
            progress: history.iter().skip(skip).map(|p| (**p).clone()).collect(),
        }))
    }

    type WatchProgressStream = ProgressStream;

    async fn watch_progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        self.token.check_read(&request)?;
        self.check_query(&request.get_ref().query)?;
        let mut closing = self.closing.clone();
        let stream = BroadcastStream::new(self.status.subscribe())
            .filter_map(|item| async move {
                match item {
                    Ok(p) => Some(Ok((*p).clone())),
                    // A watcher too slow for the epochs skips some; the ring still has them.
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        tracing::debug!("a progress watcher missed {n} epochs");
                        None
                    }
                }
            })
            .take_until(async move {
                let _ = closing.wait_for(|c| *c).await;
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_executors(
        &self,
        request: Request<ListExecutorsRequest>,
    ) -> Result<Response<ListExecutorsResponse>, Status> {
        self.token.check_read(&request)?;
        let (reply, answer) = oneshot::channel();
        self.membership
            .send(MembershipMsg::List { reply })
            .await
            .map_err(|_| gone())?;
        let members = answer.await.map_err(|_| gone())?;
        let (assignment, retiring, retired) = {
            let s = self.status.status.borrow();
            (s.assignment.clone(), s.retiring.clone(), s.retired.clone())
        };
        let last = self.status.last();
        let last_of = |id: &str| {
            last.as_ref()
                .and_then(|p| p.executors.iter().find(|e| e.executor_id == id).cloned())
        };
        let mut executors: Vec<ExecutorInfo> = members
            .iter()
            .map(|m| {
                let assigned = assignment.iter().find(|a| a.executor_id == m.id);
                ExecutorInfo {
                    executor_id: m.id.clone(),
                    address: m.address.clone(),
                    state: if retiring.contains(&m.id) {
                        ExecutorState::Retiring
                    } else if retired.contains(&m.id) {
                        ExecutorState::Retired
                    } else if assigned.is_some() {
                        ExecutorState::Active
                    } else if !m.ready {
                        ExecutorState::Starting
                    } else {
                        ExecutorState::Joining
                    } as i32,
                    partitions: assigned.map(|a| a.partitions.clone()).unwrap_or_default(),
                    key_groups: assigned
                        .map(|a| key_group_ranges(&a.key_groups))
                        .unwrap_or_default(),
                    key_group_count: assigned.map_or(0, |a| a.key_groups.count()),
                    registered_at: wall(m.registered_at),
                    last_heartbeat: wall(m.last_heartbeat),
                    heartbeat_age_seconds: Some(m.last_heartbeat.elapsed().as_secs_f64()),
                    last_epoch: last_of(&m.id),
                }
            })
            .collect();
        for a in &assignment {
            if !members.iter().any(|m| m.id == a.executor_id) {
                executors.push(ExecutorInfo {
                    executor_id: a.executor_id.clone(),
                    state: if retired.contains(&a.executor_id) {
                        ExecutorState::Retired
                    } else {
                        ExecutorState::Lost
                    } as i32,
                    partitions: a.partitions.clone(),
                    key_groups: key_group_ranges(&a.key_groups),
                    key_group_count: a.key_groups.count(),
                    last_epoch: last_of(&a.executor_id),
                    ..Default::default()
                });
            }
        }
        executors.sort_by(|a, b| a.executor_id.cmp(&b.executor_id));
        Ok(Response::new(ListExecutorsResponse { executors }))
    }

    async fn pause(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<QueryStatus>, Status> {
        self.allow_change(&request, false)?;
        self.controls.paused.send_replace(true);
        tracing::info!("pause requested through the admin API");
        Ok(Response::new(self.query_status()))
    }

    async fn resume(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<QueryStatus>, Status> {
        self.allow_change(&request, false)?;
        self.controls.paused.send_replace(false);
        tracing::info!("resume requested through the admin API");
        // The coordinator notices at once; show what it is about to do.
        let mut status = self.query_status();
        if status.state == QueryState::Paused as i32 {
            status.state = QueryState::Idle as i32;
            status.message = "resuming".into();
        }
        Ok(Response::new(status))
    }

    async fn stop(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<QueryStatus>, Status> {
        self.allow_change(&request, true)?;
        self.controls.stop.send_replace(true);
        tracing::info!("stop requested through the admin API; finishing the epoch in progress");
        Ok(Response::new(self.query_status()))
    }

    async fn checkpoint_now(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<CheckpointNowResponse>, Status> {
        self.allow_change(&request, false)?;
        let (reply, answer) = oneshot::channel();
        self.controls
            .checkpoint
            .send(reply)
            .await
            .map_err(|_| gone())?;
        let outcome = answer.await.map_err(|_| gone())?.map_err(Status::aborted)?;
        Ok(Response::new(CheckpointNowResponse {
            epoch: outcome.epoch,
            ran: outcome.ran,
            delta_version: outcome.delta_version,
        }))
    }

    async fn compact(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        self.allow_change(&request, false)?;
        let (reply, answer) = oneshot::channel();
        self.controls
            .compact
            .send(reply)
            .await
            .map_err(|_| gone())?;
        let tables = answer.await.map_err(|_| gone())?.map_err(Status::aborted)?;
        Ok(Response::new(CompactResponse { tables }))
    }

    async fn scale(&self, request: Request<ScaleRequest>) -> Result<Response<QueryStatus>, Status> {
        self.token.check(&request)?;
        let req = request.into_inner();
        self.check_query(&req.query)?;
        self.refuse_when_finished()?;
        let target = self
            .scaler
            .set(req.executors as usize, "weir admin scale")
            .map_err(|m| match self.scaler.external {
                true => Status::failed_precondition(m),
                false => Status::invalid_argument(m),
            })?;
        tracing::info!(
            executors = target.executors,
            "`weir admin scale`: the next epoch runs on {} executors",
            target.executors
        );
        Ok(Response::new(self.query_status()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::query_status::StatusBoard;
    use proptest::prelude::*;
    use weir_proto::admin::admin_server::Admin;

    /// A service whose membership answers every list with no member, with `token`.
    pub(crate) fn service(token: Option<&str>) -> (AdminService, StatusBoard) {
        let (board, status) = StatusBoard::new();
        let (_external_tx, external) = watch::channel(false);
        let (controls, _inbox) = crate::epoch::controls::controls(external);
        let (membership, mut messages) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(msg) = messages.recv().await {
                if let MembershipMsg::List { reply } = msg {
                    let _ = reply.send(Vec::new());
                }
            }
        });
        let (_members_tx, members) = watch::channel(Vec::new());
        let (_closing_tx, closing) = watch::channel(true);
        let service = AdminService {
            facts: QueryFacts {
                identity: QueryIdentity {
                    id: "job-id".into(),
                    run_id: "run".into(),
                    name: "q".into(),
                    topic: "t".into(),
                    queries: vec![crate::ops::progress::QueryTable {
                        name: "q".into(),
                        output_url: "file:///t".into(),
                        dedup: false,
                    }],
                },
                trigger: "1s".into(),
                checkpoint_location: "file:///c".into(),
                started_at_micros: i64::MIN,
            },
            status,
            controls,
            scaler: Scaler::new(
                1,
                weir_common::job::scaling::ExecutorBounds {
                    min: 1,
                    max: 4,
                    wait: std::time::Duration::from_secs(1),
                },
                None,
            )
            .unwrap(),
            membership,
            members,
            token: AdminToken::new(token),
            closing,
        };
        (service, board)
    }

    /// A request for `query` with metadata `authorization: <auth>` when that is a valid
    /// header value.
    fn request<T>(body: T, auth: &[u8]) -> Request<T> {
        let mut r = Request::new(body);
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(auth) {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    proptest! {
        #![proptest_config(weir_common::testing::fuzzing::config(300))]

        /// Every handler with any query name, limit and authorization header: an answer or a
        /// status, never a panic; without the token, no call changes the query.
        #[test]
        fn any_admin_request_is_answered_and_only_the_token_changes_the_query(
            query in prop_oneof![Just(String::new()), Just("q".to_string()), Just("job-id".to_string()), ".{0,40}"],
            limit in any::<u32>(),
            auth in prop_oneof![
                Just(b"Bearer s3cret".to_vec()),
                Just(b"Bearer s3cre".to_vec()),
                Just(b"Bearer s3cret\x00".to_vec()),
                Just(b"bearer s3cret".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (service, _board) = service(Some("s3cret"));
                let progress = || ProgressRequest { query: query.clone(), limit };
                let control = || ControlRequest { query: query.clone() };
                let _ = service.list_queries(request(ListQueriesRequest::default(), &auth)).await;
                let _ = service.get_progress(request(progress(), &auth)).await;
                let _ = service.recent_progress(request(progress(), &auth)).await;
                let _ = service.watch_progress(request(progress(), &auth)).await;
                let _ = service.list_executors(request(ListExecutorsRequest::default(), &auth)).await;
                let authorized = auth == b"Bearer s3cret";
                let scaled = service.scale(request(ScaleRequest { query: query.clone(), executors: 3 }, &auth)).await;
                prop_assert_eq!(scaled.is_ok(), authorized && (query.is_empty() || query == "q" || query == "job-id"));
                prop_assert_eq!(service.scaler.current().executors, if scaled.is_ok() { 3 } else { 1 });
                let out_of_bounds = service.scale(request(ScaleRequest { query: query.clone(), executors: 5 }, &auth)).await;
                prop_assert!(out_of_bounds.is_err());
                let paused = service.pause(request(control(), &auth)).await;
                prop_assert_eq!(paused.is_ok(), authorized && (query.is_empty() || query == "q" || query == "job-id"));
                prop_assert_eq!(*service.controls.paused.borrow(), paused.is_ok());
                let _ = service.resume(request(control(), &auth)).await;
                let stopped = service.stop(request(control(), &auth)).await;
                prop_assert_eq!(*service.controls.stop.borrow(), stopped.is_ok());
                if !authorized {
                    prop_assert!(!*service.controls.paused.borrow() && !*service.controls.stop.borrow());
                }
                Ok(())
            })?;
        }
    }
}
