//! The Raft type configuration and timing of the coordinator group.

use std::io::Cursor;

use crate::state::{Applied, Command};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Commands in, `Result<Reply, Refusal>` out; node ids are membership's.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Timing of the group. Elections must not fire while a busy 2-core
/// machine delays a heartbeat, and must fire soon after a leader dies
/// (target: a new leader serving within 2 s).
///
/// openraft lets a follower stand for election only once the leader's
/// lease (`election_max_ms`) *and* a random election timeout (between min
/// and max) have passed since it last heard from the leader: 1.2–1.6 s
/// with these defaults, then one round of votes.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming { heartbeat_ms: 100, election_min_ms: 400, election_max_ms: 800 }
    }
}

pub fn openraft_config(t: &RaftTiming) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: "idunno".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_min_ms,
        election_timeout_max: t.election_max_ms,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    }
    .validate()
}
