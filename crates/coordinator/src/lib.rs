//! The coordinator group: the cluster state every node agrees on, kept by
//! a Raft group (openraft) over the members. Its leader is the
//! coordinator; the other voters are hot standbys with the same state.
//!
//! The state it replicates is opaque here: `idunno_state`'s commands in,
//! its replies out (that crate owns the domains, their rules and tests).
//!
//! - `group`: who should be a voter (sans-IO repair policy).
//! - `store`: durable log (redb) and snapshots (files).
//! - `network`: Raft messages over gRPC.
//! - `service`: the gRPC front end for clients and forwarding nodes.
//! - `events`: what this node observes, written to the timeline.
//! - this file: [`Coordinator`], the handle the node holds, with writes and
//!   fresh reads that go to the leader wherever they are called, and the
//!   repair loop that keeps the group whole as members die and return.
//!
//! This crate knows membership only through `MembershipHandle`'s view.

// openraft's storage and config traits fix their (large) error types.
#![allow(clippy::result_large_err)]

pub mod events;
pub mod group;
pub mod network;
pub mod raft;
pub mod service;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use idunno_membership::{MemberState, MembershipHandle};
use idunno_rpc::{CoordinatorClient, Limited, v1};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::events::Recorder;
use crate::group::{GroupAction, GroupView, Liveness};
pub use crate::raft::{NodeId, Raft, RaftSettings};
use crate::store::{LogStore, SmData, StateMachineStore};
use idunno_state::{Applied, Command};

/// How long a write or a fresh read keeps trying to reach a leader (one
/// may be being elected) before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// No leader could be reached in time; nothing is known to have
    /// changed. Retry later.
    #[error("no coordinator leader answered within {} s", LEADER_WAIT.as_secs())]
    NoLeader,
    /// This node is not the leader (answer to a forwarded request).
    #[error("node {node} is not the coordinator leader")]
    NotLeader { node: NodeId },
    #[error("bad command: {0}")]
    BadCommand(String),
    /// The leader could not commit in time: it may be cut off from the
    /// majority. The command may still be applied if it later commits.
    #[error("not committed within {} s (is a majority of the coordinator group reachable?); it may still be applied", LEADER_WAIT.as_secs())]
    NotCommitted,
    /// Raft stopped on this node; it must restart.
    #[error("coordinator stopped: {0}")]
    Stopped(String),
    #[error("coordinator storage at {path}: {reason}")]
    Storage { path: String, reason: String },
    /// This node did not catch up with the leader in time for a read (it
    /// may be cut off from it); nothing was read. Retry, or ask another
    /// node.
    #[error("this node has applied the coordinator log up to {applied}, not yet to {index}, within {} s", LEADER_WAIT.as_secs())]
    Behind { index: u64, applied: u64 },
}

/// A write that went through the log.
#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    pub applied: Applied,
    pub log_index: u64,
    pub leader: NodeId,
}

/// The group as this node sees it now.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub applied_index: Option<u64>,
}

pub struct Coordinator {
    id: NodeId,
    raft: Raft,
    state: watch::Receiver<Arc<SmData>>,
    /// The term this node leads, while it leads.
    leadership: watch::Receiver<Option<u64>>,
    /// The connection forwarded requests use, kept while the leader's
    /// address stays the same (a new TCP connection per request would
    /// double a forwarded write's latency).
    to_leader: std::sync::Mutex<Option<(String, CoordinatorClient<tonic::transport::Channel>)>>,
    /// What this node's layers put on the timeline.
    events: events::Recorder,
    /// Time for a write through [`Coordinator::apply`] to commit (from this
    /// node, forwarding included), for `/metrics`.
    pub apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Coordinator {
    /// Open the group's storage in `dir` and start Raft. A node whose
    /// storage is empty and that is told to `bootstrap` founds a new group
    /// with itself as the only voter; others wait to be added by a leader.
    pub async fn start(
        id: NodeId,
        cluster: &str,
        addr: SocketAddr,
        dir: &Path,
        bootstrap: bool,
        settings: &RaftSettings,
    ) -> Result<Coordinator, CoordError> {
        let storage =
            |e: std::io::Error| CoordError::Storage { path: dir.display().to_string(), reason: e.to_string() };
        let log = LogStore::open(dir).map_err(storage)?;
        let empty = log.is_empty().map_err(storage)?;
        let sm = StateMachineStore::open(dir).map_err(storage)?;
        let state = sm.watch();
        let config = raft::openraft_config(settings).map_err(|e| CoordError::Stopped(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), network::Network { cluster: cluster.to_string() }, log, sm)
            .await
            .map_err(|e| CoordError::Stopped(e.to_string()))?;
        if bootstrap && empty {
            tracing::info!(id, "founding a new coordinator group");
            let members = BTreeMap::from([(id, BasicNode { addr: addr.to_string() })]);
            raft.initialize(members).await.map_err(|e| CoordError::Stopped(e.to_string()))?;
        }
        let leadership = watch_leadership(id, &raft);
        let events = events::Recorder::new(id, idunno_net::now_ms());
        let apply_seconds = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18),
        );
        Ok(Coordinator { id, raft, state, leadership, to_leader: std::sync::Mutex::new(None), events, apply_seconds })
    }

    /// The term this node leads (`None` while it does not), as it changes:
    /// what leader-only duties start and stop with (see [`leader_duty`]).
    pub fn leadership(&self) -> watch::Receiver<Option<u64>> {
        self.leadership.clone()
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        GroupStatus {
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            applied_index: m.last_applied.map(|l| l.index),
        }
    }

    /// Whether this node leads and every member of the group (voters and
    /// learners) holds the log up to `index`: what every node will apply
    /// before anything later. False on a follower.
    pub fn replicated_everywhere(&self, index: u64) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let Some(replication) = m.replication else { return false };
        let members = m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != self.id);
        members.into_iter().all(|id| replication.get(&id).is_some_and(|l| l.is_some_and(|l| l.index >= index)))
    }

    /// Every newly applied state, as this node applies it.
    pub fn watch_state(&self) -> watch::Receiver<Arc<SmData>> {
        self.state.clone()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address of the current leader, if one is known.
    pub fn leader_rpc_addr(&self) -> Option<(NodeId, String)> {
        let leader = self.status().leader?;
        Some((leader, self.leader_addr(leader)?))
    }

    /// The state as this node has applied it (may lag the leader).
    pub fn local_state(&self) -> Arc<SmData> {
        self.state.borrow().clone()
    }

    fn leader_addr(&self, leader: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Apply `cmd` here if this node leads; `NotLeader` otherwise.
    pub async fn apply_local(&self, cmd: Command) -> Result<ApplyOutcome, CoordError> {
        // A leader cut off from its majority cannot commit, and openraft
        // would wait for ever.
        let Ok(written) = tokio::time::timeout(LEADER_WAIT, self.raft.client_write(cmd)).await else {
            return Err(CoordError::NotCommitted);
        };
        match written {
            Ok(r) => Ok(ApplyOutcome { applied: r.data, log_index: r.log_id.index, leader: self.id }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(CoordError::NotLeader { node: self.id })
            }
            Err(RaftError::APIError(e)) => Err(CoordError::BadCommand(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(CoordError::Stopped(e.to_string())),
        }
    }

    /// Apply `cmd` through the leader, wherever it is, waiting out an
    /// election. A reply means the command is committed (or was refused
    /// and changed nothing).
    ///
    /// A retry after a leader died mid-write may apply the command twice;
    /// commands that must not repeat carry their own idempotency check.
    pub async fn apply(&self, cmd: impl Into<Command>) -> Result<ApplyOutcome, CoordError> {
        let cmd = cmd.into();
        let json = serde_json::to_vec(&cmd).map_err(|e| CoordError::BadCommand(e.to_string()))?;
        let started = Instant::now();
        let out = self.at_leader("write", || self.apply_local(cmd.clone()), |c| forward_apply(c, &json)).await;
        if out.is_ok() {
            self.apply_seconds.observe(started.elapsed().as_secs_f64());
        }
        out
    }

    /// Run `local` if this node leads, else `remote` against the leader,
    /// retrying (an election may be under way) until [`LEADER_WAIT`].
    async fn at_leader<T, L, LF, R, RF>(&self, what: &str, local: L, remote: R) -> Result<T, CoordError>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, CoordError>>,
        R: Fn(CoordinatorClient<tonic::transport::Channel>) -> RF,
        RF: std::future::Future<Output = Result<T, String>>,
    {
        let give_up = Instant::now() + LEADER_WAIT;
        loop {
            match self.status().leader {
                Some(l) if l == self.id => match local().await {
                    Err(CoordError::NotLeader { .. }) => {}
                    other => return other,
                },
                Some(l) => {
                    if let Some(addr) = self.leader_addr(l) {
                        match remote(self.leader_client(&addr)?).await {
                            Ok(out) => return Ok(out),
                            Err(e) => tracing::debug!(leader = l, error = %e, "forwarding a {what}"),
                        }
                    }
                }
                None => {}
            }
            if Instant::now() >= give_up {
                return Err(CoordError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The state as of now at the leader: served here if this node leads
    /// (after confirming it still does), else fetched from the leader.
    pub async fn read_local(&self) -> Result<(Arc<SmData>, NodeId), CoordError> {
        // As for writes: a leader cut off from its majority cannot confirm
        // that it still leads, and openraft would wait for ever.
        let Ok(confirmed) = tokio::time::timeout(LEADER_WAIT, self.raft.ensure_linearizable()).await else {
            return Err(CoordError::NoLeader);
        };
        match confirmed {
            Ok(_) => Ok((self.local_state(), self.id)),
            Err(RaftError::Fatal(e)) => Err(CoordError::Stopped(e.to_string())),
            Err(RaftError::APIError(_)) => Err(CoordError::NotLeader { node: self.id }),
        }
    }

    /// The index a linearizable read must wait for, if this node leads
    /// (after confirming with a quorum that it still does); `NotLeader`
    /// otherwise.
    pub async fn read_index_local(&self) -> Result<(u64, NodeId), CoordError> {
        let Ok(confirmed) = tokio::time::timeout(LEADER_WAIT, self.raft.get_read_log_id()).await else {
            return Err(CoordError::NoLeader);
        };
        match confirmed {
            Ok((read, _applied)) => Ok((read.map_or(0, |l| l.index), self.id)),
            Err(RaftError::Fatal(e)) => Err(CoordError::Stopped(e.to_string())),
            Err(RaftError::APIError(_)) => Err(CoordError::NotLeader { node: self.id }),
        }
    }

    /// The state as of now (linearizable), answered from this node's own
    /// state: the leader names the index to wait for (read index), this
    /// node waits until it has applied it. Nothing but that index crosses
    /// the network, whatever the state's size.
    pub async fn read(&self) -> Result<(Arc<SmData>, NodeId), CoordError> {
        let give_up = Instant::now() + LEADER_WAIT;
        let (index, leader) = self.at_leader("read", || self.read_index_local(), forward_read_index).await?;
        let mut state = self.state.clone();
        loop {
            let applied = state.borrow_and_update().last_applied.map_or(0, |l| l.index);
            if applied >= index {
                return Ok((self.local_state(), leader));
            }
            match tokio::time::timeout_at(give_up, state.changed()).await {
                Ok(Ok(())) => {}
                Err(_) => return Err(CoordError::Behind { index, applied }),
                // The state machine is gone (Raft stopped): nothing will
                // change again, and waiting on it would spin.
                Ok(Err(_)) => return Err(CoordError::Stopped("the state machine stopped".into())),
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Keep the group whole: while this node leads, follow `group`'s
    /// policy one action at a time, re-checking after every membership
    /// change and every second.
    pub fn spawn_repair(
        self: &Arc<Self>,
        membership: MembershipHandle,
        max_voters: usize,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(leader_duty(self.leadership(), shutdown, move |_term, stop| {
            let (me, membership) = (me.clone(), membership.clone());
            async move {
                let mut view = membership.watch();
                loop {
                    let v = me.group_view(&membership, max_voters);
                    if let Some(action) = group::next_action(&v) {
                        match me.carry_out(action.clone()).await {
                            Ok(()) => {
                                tracing::info!(?action, "coordinator group changed");
                                me.record_voters(&v.voters, &action);
                                continue;
                            }
                            Err(e) => tracing::warn!(?action, error = %e, "coordinator group change failed"),
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        // (A membership that stopped would wake this at once, forever.)
                        r = view.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }))
    }

    fn group_view(&self, membership: &MembershipHandle, max_voters: usize) -> GroupView {
        let status = self.status();
        let state = self.local_state();
        let nodes = membership
            .view()
            .members
            .into_iter()
            .map(|m| {
                let l = match m.state {
                    MemberState::Alive | MemberState::Suspect if state.state.nodes.is_draining(m.identity.id.0) => {
                        Liveness::Draining
                    }
                    MemberState::Alive | MemberState::Suspect => Liveness::Up,
                    MemberState::Dead | MemberState::Left => Liveness::Gone,
                };
                (m.identity.id.0, (l, m.identity.addr.to_string()))
            })
            .collect();
        GroupView {
            voters: status.voters.into_iter().collect(),
            learners: status.learners.into_iter().collect(),
            nodes,
            max_voters,
        }
    }

    /// Put a change of voters on the timeline.
    fn record_voters(&self, before: &BTreeSet<u64>, action: &GroupAction) {
        let GroupAction::SetVoters(after) = action else { return };
        let list = |s: &BTreeSet<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        for (ids, kind, verb) in [
            (after.difference(before), idunno_state::EventKind::VoterAdded, "became a voter"),
            (before.difference(after), idunno_state::EventKind::VoterRemoved, "is no longer a voter"),
        ] {
            for id in ids {
                let detail = format!("node {id} {verb} (voters {})", list(after));
                self.events.record(kind, *id, None, detail, None);
            }
        }
    }

    async fn carry_out(&self, action: GroupAction) -> Result<(), String> {
        let r = match action {
            GroupAction::AddLearner { id, addr } => {
                // Non-blocking: the learner catches up in the background and
                // is promoted once the policy sees it.
                self.raft.add_learner(id, BasicNode { addr }, false).await.map(|_| ())
            }
            GroupAction::SetVoters(voters) => {
                self.raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true).await.map(|_| ())
            }
            GroupAction::RemoveNodes(ids) => self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(ids.into_iter().collect::<BTreeSet<_>>()), true)
                .await
                .map(|_| ()),
        };
        r.map_err(|e| e.to_string())
    }
}

impl Coordinator {
    /// A client for the leader at `addr`, reusing the last one if the
    /// leader has not moved. tonic reconnects a lazy channel by itself.
    fn leader_client(&self, addr: &str) -> Result<CoordinatorClient<tonic::transport::Channel>, CoordError> {
        let mut slot = self.to_leader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = slot.as_ref()
            && a == addr
        {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| CoordError::BadCommand(format!("leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let c = CoordinatorClient::new(idunno_net::lazy_channel(&endpoint)).limited();
        *slot = Some((addr.to_string(), c.clone()));
        Ok(c)
    }
}

/// Follow Raft's metrics: the term this node leads, while it leads. The
/// task ends with Raft.
fn watch_leadership(id: NodeId, raft: &Raft) -> watch::Receiver<Option<u64>> {
    let mut metrics = raft.metrics();
    // Both: a restarted node reads its last vote back and, until it hears
    // from the group, names itself the leader of that old term without
    // being one (its state is Learner or Follower).
    let leads = move |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
        (m.current_leader == Some(id) && m.state == openraft::ServerState::Leader).then_some(m.current_term)
    };
    let (tx, rx) = watch::channel(leads(&metrics.borrow()));
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let now = leads(&metrics.borrow_and_update());
            tx.send_if_modified(|old| std::mem::replace(old, now) != now);
        }
    });
    rx
}

/// Run a leader-only duty for each term this node leads: `duty(term,
/// stop)` starts when the term starts and `stop` is cancelled when it
/// ends (or at `shutdown`); the next term starts only after the duty
/// returned. One owner per duty, no polling for leadership.
pub async fn leader_duty<F, Fut>(mut leadership: watch::Receiver<Option<u64>>, shutdown: CancellationToken, duty: F)
where
    F: Fn(u64, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let term = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            led = leadership.wait_for(Option::is_some) => match led {
                Ok(term) => term.unwrap_or_default(),
                Err(_) => return,
            },
        };
        let stop = shutdown.child_token();
        let run = duty(term, stop.clone());
        tokio::pin!(run);
        let mut ran_out = false;
        loop {
            tokio::select! {
                _ = &mut run, if !ran_out => ran_out = true,
                changed = leadership.changed() => {
                    if changed.is_err() || *leadership.borrow() != Some(term) {
                        break;
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        stop.cancel();
        if !ran_out {
            run.await;
        }
    }
}

async fn forward_apply(
    mut c: CoordinatorClient<tonic::transport::Channel>,
    json: &[u8],
) -> Result<ApplyOutcome, String> {
    let r = c
        .apply(v1::ApplyRequest { command_json: json.to_vec(), forwarded: true })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let applied: Applied = serde_json::from_slice(&r.applied_json).map_err(|e| e.to_string())?;
    Ok(ApplyOutcome { applied, log_index: r.log_index, leader: r.leader })
}

async fn forward_read_index(mut c: CoordinatorClient<tonic::transport::Channel>) -> Result<(u64, NodeId), String> {
    let r = c.read_index(v1::ReadIndexRequest {}).await.map_err(|s| s.message().to_string())?.into_inner();
    Ok((r.index, r.leader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A duty runs once per term this node leads, is stopped when the term
    /// ends, and the next term's starts only after it returned.
    #[tokio::test]
    async fn a_leader_duty_starts_and_stops_with_each_term() {
        let (tx, rx) = watch::channel(None);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let shutdown = CancellationToken::new();
        let task = {
            let (log, shutdown) = (log.clone(), shutdown.clone());
            tokio::spawn(leader_duty(rx, shutdown, move |term, stop| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(format!("start {term}"));
                    stop.cancelled().await;
                    // A duty winding down is waited for.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    log.lock().unwrap().push(format!("stop {term}"));
                }
            }))
        };
        let seen = |n: usize| {
            let log = log.clone();
            async move {
                for _ in 0..200 {
                    if log.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        tx.send(Some(3)).unwrap();
        seen(1).await;
        tx.send(None).unwrap();
        seen(2).await;
        // Re-elected straight into a later term: the old term's duty ends
        // before the new one starts.
        tx.send(Some(5)).unwrap();
        seen(3).await;
        tx.send(Some(6)).unwrap();
        seen(5).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["start 3", "stop 3", "start 5", "stop 5", "start 6", "stop 6"]);
    }
}
