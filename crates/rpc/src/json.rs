//! The JSON documents of the scripting contract (SPEC §10), built from the
//! protocol messages. The CLI's `--json` and the HTTP API under `/api/`
//! both print these, so the two never disagree.

use serde::Serialize;

use crate::v1;

#[derive(Clone, Debug, Serialize)]
pub struct MemberJson {
    pub id: u64,
    pub addr: String,
    /// "alive" | "suspect" | "dead" | "left" | "draining"
    pub state: &'static str,
    /// The member's generation: larger after every restart or rejoin.
    pub incarnation: u64,
    /// "leader" | "standby" | "worker"
    pub role: &'static str,
    pub swim_incarnation: u32,
    pub is_self: bool,
}

impl From<&v1::Member> for MemberJson {
    fn from(m: &v1::Member) -> Self {
        MemberJson {
            id: m.id,
            addr: m.addr.clone(),
            state: state_name(m.state()),
            incarnation: m.incarnation,
            role: role_name(m.role()),
            swim_incarnation: m.swim_incarnation,
            is_self: m.is_self,
        }
    }
}

pub fn state_name(s: v1::MemberState) -> &'static str {
    match s {
        v1::MemberState::Alive => "alive",
        v1::MemberState::Suspect => "suspect",
        v1::MemberState::Dead => "dead",
        v1::MemberState::Left => "left",
        v1::MemberState::Draining => "draining",
        v1::MemberState::Unspecified => "unknown",
    }
}

pub fn role_name(r: v1::Role) -> &'static str {
    match r {
        v1::Role::Leader => "leader",
        v1::Role::Standby => "standby",
        v1::Role::Worker => "worker",
        v1::Role::Unspecified => "unknown",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusJson {
    pub node: u64,
    pub leader: Option<u64>,
    pub term: Option<u64>,
    pub voters: Vec<u64>,
    pub members_alive: u32,
    pub jobs_running: u32,
    pub addr: String,
    pub http: String,
    pub generation: u64,
    pub version: String,
    pub pid: u32,
    /// Last log index this node applied (coordinator group).
    pub applied_index: Option<u64>,
    pub learners: Vec<u64>,
    pub swim: SwimStatsJson,
    pub security: SecurityJson,
    /// The wire protocol the node speaks and its data folder's format.
    pub protocol: u32,
    pub data_format: u32,
    /// Bytes the node's caches hold, and their bounds.
    pub caches: CachesJson,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CachesJson {
    pub inputs: u64,
    pub models: u64,
    pub training: u64,
    pub limit: u64,
    pub models_limit: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SecurityJson {
    pub secured: bool,
    pub refused: u64,
    pub key_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SwimStatsJson {
    pub datagrams_in: u64,
    pub datagrams_rejected: u64,
    pub dead_events: u64,
    pub self_renewals: u64,
}

impl From<&v1::StatusReply> for StatusJson {
    fn from(s: &v1::StatusReply) -> Self {
        let swim = s.swim.as_ref().map(|w| SwimStatsJson {
            datagrams_in: w.datagrams_in,
            datagrams_rejected: w.datagrams_rejected,
            dead_events: w.dead_events,
            self_renewals: w.self_renewals,
        });
        StatusJson {
            node: s.node,
            leader: s.leader,
            term: s.term,
            voters: s.voters.clone(),
            members_alive: s.members_alive,
            jobs_running: s.jobs_running,
            addr: s.addr.clone(),
            http: s.http.clone(),
            generation: s.generation,
            version: s.version.clone(),
            pid: s.pid,
            applied_index: s.applied_index,
            learners: s.learners.clone(),
            swim: swim.unwrap_or_default(),
            security: s
                .security
                .as_ref()
                .map(|x| SecurityJson { secured: x.secured, refused: x.refused, key_ids: x.key_ids.clone() })
                .unwrap_or_default(),
            protocol: s.protocol,
            data_format: s.data_format,
            caches: s
                .caches
                .as_ref()
                .map(|c| CachesJson {
                    inputs: c.inputs,
                    models: c.models,
                    training: c.training,
                    limit: c.limit,
                    models_limit: c.models_limit,
                })
                .unwrap_or_default(),
        }
    }
}
