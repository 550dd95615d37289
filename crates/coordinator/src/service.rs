//! The `Coordinator` gRPC service: clients' and forwarding nodes' way to
//! apply commands and read the replicated state.

use std::sync::Arc;

use idunno_rpc::v1;
use tonic::{Request, Response, Status};

use crate::{CoordError, Coordinator};
use idunno_state::Command;

pub struct CoordinatorService(pub Arc<Coordinator>);

/// The gRPC status for a coordinator error (shared by services that apply commands).
pub fn status_of(e: CoordError) -> Status {
    match e {
        CoordError::BadCommand(m) => Status::invalid_argument(m),
        e @ (CoordError::NoLeader
        | CoordError::NotLeader { .. }
        | CoordError::NotCommitted
        | CoordError::Behind { .. }) => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl idunno_rpc::Coordinator for CoordinatorService {
    async fn apply(&self, req: Request<v1::ApplyRequest>) -> Result<Response<v1::ApplyReply>, Status> {
        let req = req.into_inner();
        let cmd: Command = serde_json::from_slice(&req.command_json)
            .map_err(|e| Status::invalid_argument(format!("not a coordinator command: {e}")))?;
        let out = if req.forwarded { self.0.apply_local(cmd).await } else { self.0.apply(cmd).await };
        let out = out.map_err(status_of)?;
        let applied_json = serde_json::to_vec(&out.applied).map_err(|e| Status::internal(e.to_string()))?;
        let refusal = out.applied.as_ref().err().map(|r| r.to_string()).unwrap_or_default();
        Ok(Response::new(v1::ApplyReply { applied_json, log_index: out.log_index, leader: out.leader, refusal }))
    }

    async fn read_index(&self, _: Request<v1::ReadIndexRequest>) -> Result<Response<v1::ReadIndexReply>, Status> {
        let (index, leader) = self.0.read_index_local().await.map_err(status_of)?;
        Ok(Response::new(v1::ReadIndexReply { index, leader }))
    }

    async fn read_state(&self, req: Request<v1::ReadStateRequest>) -> Result<Response<v1::ReadStateReply>, Status> {
        let req = req.into_inner();
        let (data, leader) = if req.local {
            (self.0.local_state(), self.0.status().leader.unwrap_or(0))
        } else if req.forwarded {
            self.0.read_local().await.map_err(status_of)?
        } else {
            self.0.read().await.map_err(status_of)?
        };
        let state_json = serde_json::to_vec(&*data).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::ReadStateReply {
            state_json,
            applied_index: data.last_applied.map(|l| l.index).unwrap_or(0),
            leader,
        }))
    }
}
