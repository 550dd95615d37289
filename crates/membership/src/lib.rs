//! Group membership and failure detection: SWIM with suspicion and
//! incarnations (the `foca` crate), over UDP.
//!
//! - `core`: the sans-IO state machine (no sockets, no tokio, no clock).
//! - `driver`: the tokio task that owns it and talks UDP.
//!
//! This crate knows nothing of RPC, storage or jobs; other layers learn
//! about members through [`MembershipHandle`].

mod codec;
mod config;
mod core;
mod driver;
mod identity;

pub use crate::config::{ConfigError, SwimConfig};
pub use crate::core::{Effect, MemberInfo, MemberState, MembershipEvent, Swim, SwimError, SwimStats, SwimTimer};
pub use crate::driver::{DriverOptions, MembershipHandle, PROTOCOL, Stopped, View, cluster_tag, spawn};
pub use crate::identity::{NodeId, NodeIdentity};
