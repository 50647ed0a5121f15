//! The driver's control service: translates executor calls into membership messages.

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use weir_proto::control::driver_server::Driver;
use weir_proto::control::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};

use crate::membership::MembershipMsg;

pub struct DriverService {
    pub membership: mpsc::Sender<MembershipMsg>,
    pub registration: RegisterResponse,
}

#[tonic::async_trait]
impl Driver for DriverService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.executor_id.is_empty() || req.address.is_empty() {
            return Err(Status::invalid_argument(
                "executor_id and address are required",
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.membership
            .send(MembershipMsg::Register {
                id: req.executor_id,
                address: req.address,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("driver is shutting down"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("driver is shutting down"))?;
        Ok(Response::new(self.registration.clone()))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let (reply, answer) = oneshot::channel();
        self.membership
            .send(MembershipMsg::Heartbeat {
                id: request.into_inner().executor_id,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("driver is shutting down"))?;
        let known = answer
            .await
            .map_err(|_| Status::unavailable("driver is shutting down"))?;
        Ok(Response::new(HeartbeatResponse { known }))
    }
}
