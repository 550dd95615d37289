//! Who a member is: a stable node id, the address it listens on, and a
//! generation that orders its incarnations across restarts.
//!
//! This file knows nothing of sockets or time sources: the generation is
//! chosen by the caller (the node uses the wall clock at start-up).

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's cluster-wide id. Chosen by the operator (`--id`) or generated
/// once and kept in the node's data folder, so it survives restarts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The identity SWIM gossips about. Two identities with the same `addr` are
/// the same machine slot; the one with the larger `generation` is the live
/// one (a restart or a rejoin after a false "dead" verdict bumps it).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Stable id of the node process's data folder.
    pub id: NodeId,
    /// Where the node listens: UDP for SWIM and TCP for RPC share this
    /// address, so one `host:port` names a node everywhere.
    pub addr: SocketAddr,
    /// Incarnation of the process: strictly larger after every restart and
    /// every self-renewal, so old news about a previous life loses.
    pub generation: u64,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}@{}#{}", self.id.0, self.addr, self.generation)
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    /// A node declared dead while it is in fact alive comes back at once
    /// under a fresh generation instead of waiting to be forgotten.
    fn renew(&self) -> Option<Self> {
        Some(Self { generation: self.generation.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
