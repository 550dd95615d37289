//! The node's answers to RPC and HTTP requests. Both front ends call the
//! same [`Shared`] methods, so `idunno member list --json` and
//! `GET /api/members` show the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use idunno_coordinator::Coordinator;
use idunno_membership::{MemberState, MembershipHandle, NodeIdentity};
use idunno_rpc::v1;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// What request handlers may read or ask for. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    pub identity: NodeIdentity,
    pub http: SocketAddr,
    pub membership: MembershipHandle,
    pub coordinator: Arc<Coordinator>,
    /// Cancelled when a client asks this node to leave: `Node::run` then
    /// shuts the node down.
    pub stop: CancellationToken,
    /// The node's keys when it has a cluster secret.
    pub keys: Option<idunno_auth::KeysCell>,
    /// Connections and calls refused (TLS handshakes, roles, tokens).
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    /// The wire protocol this node speaks.
    pub protocol: u8,
    /// The jobs layer (what its caches hold).
    pub jobs: Arc<idunno_jobs::Jobs>,
}

impl Shared {
    pub fn members(&self) -> Vec<v1::Member> {
        let group = self.coordinator.status();
        let state = self.coordinator.local_state();
        let draining = |id: u64| state.state.nodes.is_draining(id);
        let role = |id: u64| {
            if group.leader == Some(id) {
                v1::Role::Leader
            } else if group.voters.contains(&id) {
                v1::Role::Standby
            } else {
                v1::Role::Worker
            }
        };
        self.membership
            .view()
            .members
            .into_iter()
            .map(|m| v1::Member {
                id: m.identity.id.0,
                addr: m.identity.addr.to_string(),
                state: match m.state {
                    MemberState::Alive | MemberState::Suspect if draining(m.identity.id.0) => v1::MemberState::Draining,
                    MemberState::Alive => v1::MemberState::Alive,
                    MemberState::Suspect => v1::MemberState::Suspect,
                    MemberState::Dead => v1::MemberState::Dead,
                    MemberState::Left => v1::MemberState::Left,
                } as i32,
                incarnation: m.identity.generation,
                swim_incarnation: u32::from(m.swim_incarnation),
                role: role(m.identity.id.0) as i32,
                is_self: m.is_self,
            })
            .collect()
    }

    pub fn status(&self) -> v1::StatusReply {
        let view = self.membership.view();
        let alive = view.members.iter().filter(|m| m.state.is_up()).count();
        let group = self.coordinator.status();
        let jobs_running = self
            .coordinator
            .local_state()
            .state
            .inference
            .jobs
            .values()
            .filter(|j| j.state == idunno_state::JobState::Running)
            .count();
        v1::StatusReply {
            node: self.identity.id.0,
            addr: self.identity.addr.to_string(),
            http: self.http.to_string(),
            leader: group.leader,
            term: Some(group.term),
            voters: group.voters,
            learners: group.learners,
            applied_index: group.applied_index,
            members_alive: alive as u32,
            jobs_running: jobs_running as u32,
            // The current generation: larger than at start-up if this node
            // was declared dead and rejoined.
            generation: view
                .members
                .iter()
                .find(|m| m.is_self)
                .map_or(self.identity.generation, |m| m.identity.generation),
            swim: Some(v1::SwimStats {
                datagrams_in: view.stats.datagrams_in,
                datagrams_rejected: view.stats.datagrams_rejected,
                dead_events: view.stats.dead_events,
                self_renewals: view.stats.self_renewals,
            }),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            caches: Some(self.jobs.caches()),
            security: Some(v1::Security {
                secured: self.keys.is_some(),
                refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
                key_ids: self
                    .keys
                    .as_ref()
                    .map(|k| k.current().ring.all().map(|s| s.key_id_hex()).collect())
                    .unwrap_or_default(),
            }),
            protocol: u32::from(self.protocol),
            data_format: crate::DATA_FORMAT,
        }
    }
}

/// At most this many events in one reply (a client asks again after the
/// last): 1,000 events are ~250 KB of JSON.
const EVENTS_PER_REPLY: usize = 1000;

/// How long a `Join` request waits for the group to answer.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The gRPC front end.
pub struct NodeService(pub Shared);

#[tonic::async_trait]
impl idunno_rpc::Node for NodeService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusReply>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn members(&self, _: Request<v1::MembersRequest>) -> Result<Response<v1::MembersReply>, Status> {
        Ok(Response::new(v1::MembersReply { members: self.0.members() }))
    }

    async fn join(&self, req: Request<v1::JoinRequest>) -> Result<Response<v1::JoinReply>, Status> {
        let text = req.into_inner().introducer;
        let entries: Vec<String> = text.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if entries.is_empty() {
            return Err(Status::invalid_argument("no introducer given"));
        }
        crate::join::check_entries(&entries).map_err(Status::invalid_argument)?;
        let me = self.0.identity.addr;
        let coordinator = self.0.coordinator.clone();
        let leader_known = || coordinator.status().leader.is_some();
        // Shorter than a client's call deadline, so the client hears why.
        crate::join::join(&self.0.membership, &entries, &[me], leader_known, Some(JOIN_WAIT)).await.map_err(
            |e| match e {
                crate::join::JoinError::TimedOut { .. } => Status::unavailable(format!("{text}: {e}")),
                crate::join::JoinError::Stopped => Status::unavailable(e.to_string()),
            },
        )?;
        let alive = self.0.membership.view().members.iter().filter(|m| m.state.is_up()).count();
        Ok(Response::new(v1::JoinReply { members_alive: alive as u32 }))
    }

    async fn drain(&self, req: Request<v1::DrainRequest>) -> Result<Response<v1::DrainReply>, Status> {
        let node = req.into_inner().node;
        let view = self.0.membership.view();
        let Some(m) = view.members.iter().find(|m| m.identity.id.0 == node && m.state.is_up()) else {
            let known = view.members.iter().any(|m| m.identity.id.0 == node);
            return Err(if known {
                Status::failed_precondition(format!("node {node} is not alive: there is nothing to drain"))
            } else {
                Status::not_found(format!("no node {node} in the group"))
            });
        };
        let generation = m.identity.generation;
        let cmd = idunno_state::NodeCommand::DrainNode { node, generation, now_ms: idunno_net::now_ms() };
        let out = self.0.coordinator.apply(cmd).await.map_err(|e| Status::unavailable(e.to_string()))?;
        out.applied.map_err(|r| Status::invalid_argument(r.to_string()))?;
        tracing::info!(node, generation, "drain asked for");
        Ok(Response::new(v1::DrainReply { generation }))
    }

    async fn events(&self, req: Request<v1::EventsRequest>) -> Result<Response<v1::EventsReply>, Status> {
        let req = req.into_inner();
        let limit = match req.limit {
            0 => EVENTS_PER_REPLY,
            n => (n as usize).min(EVENTS_PER_REPLY),
        };
        let events = self.0.coordinator.local_state().state.events.after(req.after, limit);
        let json = serde_json::to_vec(&events).map_err(|e| Status::internal(format!("events: {e}")))?;
        Ok(Response::new(v1::EventsReply { json }))
    }

    async fn leave(&self, _: Request<v1::LeaveRequest>) -> Result<Response<v1::LeaveReply>, Status> {
        self.0.membership.leave().await.map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!("left the group at a client's request; stopping");
        self.0.stop.cancel();
        Ok(Response::new(v1::LeaveReply {}))
    }
}
