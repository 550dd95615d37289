//! Raft messages over gRPC: the client side ([`Network`], one [`Peer`] per
//! target, as openraft asks) and the server side ([`RaftService`]).
//! openraft's messages travel as JSON inside `RaftPayload`.

use std::time::Duration;

use idunno_rpc::v1::RaftPayload;
use idunno_rpc::{Limited, RaftClient, v1};
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::raft::{NodeId, Raft, TypeConfig};

/// The metadata key every Raft message carries: the cluster's name, so a
/// node never takes Raft messages from another cluster's leader (say, one
/// that still knows this address from a node that used to live here).
pub const CLUSTER_HEADER: &str = "idunno-cluster";

/// Makes a [`Peer`] for each node Raft replicates to.
#[derive(Clone, Default)]
pub struct Network {
    pub cluster: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), client: None, cluster: self.cluster.clone() }
    }
}

/// The connection to one member of the group, made on first use and
/// re-established by tonic after failures.
pub struct Peer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    cluster: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let c = RaftClient::new(idunno_net::lazy_channel(&endpoint)).limited();
        self.client = Some(c.clone());
        Ok(c)
    }

    /// One Raft call; `data` is a snapshot chunk's bytes, carried beside
    /// the JSON.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut request = Request::new(RaftPayload { json, data });
        request.set_timeout(option.hard_ttl());
        if let Ok(v) = self.cluster.parse() {
            request.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| RPCError::Unreachable(Unreachable::new(&StatusError(s))))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

/// A tonic status as a std error (openraft wants one).
#[derive(Debug)]
struct StatusError(Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for StatusError {}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Method::Append, &rpc, Vec::new(), &option).await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let data = std::mem::take(&mut rpc.data);
        self.call(Method::Snapshot, &rpc, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Method::Vote, &rpc, Vec::new(), &option).await
    }
}

/// The receiving side: hands each message of this cluster to the local
/// Raft.
pub struct RaftService {
    pub raft: Raft,
    pub cluster: String,
}

impl RaftService {
    /// The message and the bytes beside it, if it is for this cluster.
    fn decode<T: DeserializeOwned>(&self, req: Request<RaftPayload>) -> Result<(T, Vec<u8>), Status> {
        let theirs = req.metadata().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if theirs != self.cluster {
            // Naming neither cluster: a refusal teaches a stranger nothing.
            return Err(Status::permission_denied("raft message for another cluster"));
        }
        decode(req)
    }

    /// Refuses a message whose terms could not come from a working
    /// member: a vote beyond this node's term + [`MAX_TERM_JUMP`], or log
    /// entries from a term later than the sender's vote. Raft would take
    /// such a term as the truth and keep it on disk; one forged or buggy
    /// message could end the group for good (openraft overflows at
    /// `u64::MAX`).
    fn check_terms(&self, vote_term: u64, log_terms: impl IntoIterator<Item = u64>) -> Result<(), Status> {
        let current = self.raft.metrics().borrow().current_term;
        if vote_term > current.saturating_add(MAX_TERM_JUMP) {
            return Err(Status::invalid_argument(format!(
                "raft message with term {vote_term}, more than 2^32 beyond this node's term {current}; refused"
            )));
        }
        if let Some(t) = log_terms.into_iter().find(|&t| t > vote_term) {
            return Err(Status::invalid_argument(format!(
                "raft message carries a log entry of term {t}, later than its own term {vote_term}; refused"
            )));
        }
        Ok(())
    }
}

/// How far past this node's term a message's term may be. Terms grow by
/// one per election; no real group gets near 2^32 elections ahead of a
/// member, and the bound is far below overflow.
pub const MAX_TERM_JUMP: u64 = 1 << 32;

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<(T, Vec<u8>), Status> {
    let payload = req.into_inner();
    let msg = serde_json::from_slice(&payload.json)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
    Ok((msg, payload.data))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(v1::RaftPayload { json, data: Vec::new() }))
}

#[tonic::async_trait]
impl idunno_rpc::Raft for RaftService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (rpc, _): (AppendEntriesRequest<TypeConfig>, _) = self.decode(req)?;
        let log_terms = rpc.prev_log_id.iter().chain(rpc.leader_commit.iter()).map(|l| l.leader_id.term);
        let entry_terms = rpc.entries.iter().map(|e| e.log_id.leader_id.term);
        self.check_terms(rpc.vote.leader_id.term, log_terms.chain(entry_terms))?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (rpc, _): (VoteRequest<NodeId>, _) = self.decode(req)?;
        self.check_terms(rpc.vote.leader_id.term, rpc.last_log_id.iter().map(|l| l.leader_id.term))?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (mut rpc, data): (InstallSnapshotRequest<TypeConfig>, _) = self.decode(req)?;
        self.check_terms(rpc.vote.leader_id.term, rpc.meta.last_log_id.iter().map(|l| l.leader_id.term))?;
        rpc.data = data;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
