//! The Raft type configuration and timing of the coordinator group.

use std::io::Cursor;

use idunno_state::{Applied, Command};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Commands in, `Result<Reply, Refusal>` out; node ids are membership's.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Timing and log compaction of the group (the `[raft]` section of a node
/// config file).
///
/// Elections must not fire while a busy 2-core machine delays a heartbeat,
/// and must fire soon after a leader dies (target: a new leader serving
/// within 2 s). openraft lets a follower stand for election only once the
/// leader's lease (`election_max_ms`) *and* a random election timeout
/// (between min and max) have passed since it last heard from the leader:
/// 1.2–1.6 s with these defaults, then one round of votes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept before the last snapshot, so that a follower a
    /// little behind catches up from the log rather than a snapshot.
    pub keep_logs: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

pub fn openraft_config(t: &RaftSettings) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: "idunno".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_min_ms,
        election_timeout_max: t.election_max_ms,
        install_snapshot_timeout: 5_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: t.keep_logs,
        ..Default::default()
    }
    .validate()
}
