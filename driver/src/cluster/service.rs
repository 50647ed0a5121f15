//! The driver's control service: translates executor calls into membership messages, and keeps
//! a live executor's id from being taken by another process.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use weir_proto::cluster_auth::{ClusterSecret, Sign, Verified, PROOF_HEADER};
use weir_proto::control::driver_server::Driver;
use weir_proto::control::executor_client::ExecutorClient;
use weir_proto::control::{
    HeartbeatRequest, HeartbeatResponse, IdentifyRequest, LeaveRequest, LeaveResponse,
    RegisterRequest, RegisterResponse,
};

use crate::cluster::membership::{Member, MembershipMsg};

/// How long the executor that holds an id has to answer before another process may take it.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);

pub struct DriverService {
    pub membership: mpsc::Sender<MembershipMsg>,
    /// The job without its secrets, and the job id.
    pub registration: RegisterResponse,
    /// The cluster secret: signs the calls to executors, proves the driver to them.
    pub secret: Option<ClusterSecret>,
}

fn shutting_down<T>(_: T) -> Status {
    Status::unavailable("driver is shutting down")
}

impl DriverService {
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> MembershipMsg,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.membership
            .send(msg(reply))
            .await
            .map_err(shutting_down)?;
        answer.await.map_err(shutting_down)
    }

    /// Whether the member still answers at its address as the same process.
    async fn answers(&self, member: &Member) -> bool {
        let identify = async {
            let channel = tonic::transport::Endpoint::from_shared(member.address.clone())?
                .connect_timeout(IDENTIFY_TIMEOUT)
                .connect()
                .await?;
            let mut client = ExecutorClient::with_interceptor(channel, Sign(self.secret.clone()));
            let who = client.identify(IdentifyRequest {}).await?.into_inner();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                who.executor_id == member.id && who.incarnation == member.incarnation,
            )
        };
        matches!(
            tokio::time::timeout(IDENTIFY_TIMEOUT, identify).await,
            Ok(Ok(true))
        )
    }
}

fn taken(id: &str, holder: &Member) -> Status {
    Status::already_exists(format!(
        "executor id {id} belongs to a live executor at {}; give every executor its own --id \
         (this process may take the id once that one stops)",
        holder.address
    ))
}

#[tonic::async_trait]
impl Driver for DriverService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let verified = request.extensions().get::<Verified>().copied();
        let req = request.into_inner();
        if req.executor_id.is_empty() || req.address.is_empty() {
            return Err(Status::invalid_argument(
                "executor_id and address are required",
            ));
        }
        let id = req.executor_id;
        let holder = self
            .ask(|reply| MembershipMsg::Get {
                id: id.clone(),
                reply,
            })
            .await?;
        // Another process holds the id: it keeps it while it answers as itself.
        let replaces = match holder {
            Some(h) if h.incarnation != req.incarnation => {
                if self.answers(&h).await {
                    return Err(taken(&id, &h));
                }
                Some(h.incarnation)
            }
            _ => None,
        };
        self.ask(|reply| MembershipMsg::Register {
            id: id.clone(),
            address: req.address,
            incarnation: req.incarnation,
            replaces,
            ready: !req.preparing,
            exchange_format: req.exchange_format,
            reply,
        })
        .await?
        .map_err(|holder| taken(&id, &holder))?;
        let mut response = Response::new(self.registration.clone());
        if let (Some(secret), Some(v)) = (&self.secret, verified) {
            if let Ok(proof) = MetadataValue::try_from(secret.proof(v.nonce)) {
                response.metadata_mut().insert(PROOF_HEADER, proof);
            }
        }
        Ok(response)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let HeartbeatRequest {
            executor_id,
            incarnation,
            ready,
        } = request.into_inner();
        let known = self
            .ask(|reply| MembershipMsg::Heartbeat {
                id: executor_id,
                incarnation,
                ready,
                reply,
            })
            .await?;
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        let LeaveRequest {
            executor_id,
            incarnation,
        } = request.into_inner();
        let known = self
            .ask(|reply| MembershipMsg::Leave {
                id: executor_id,
                incarnation,
                reply,
            })
            .await?;
        Ok(Response::new(LeaveResponse { known }))
    }
}
