//! SDFS, the cluster's file system: every file version is a blob (content
//! named by its BLAKE3) on several nodes, and the namespace (name →
//! versions → size, checksum, holders) lives in the coordinator's
//! replicated state.
//!
//! - `placement`: which nodes hold a file (sans-IO).
//! - `blobs`: one node's replicas on disk, chunk-checksummed.
//! - `service`: the gRPC service: clients' put/get/delete (any node
//!   coordinates) and node-to-node blob transfer.
//!
//! A put streams the bytes to the chosen replicas in parallel, and is
//! acknowledged only once a majority of them hold the bytes durably *and*
//! the new version is committed in the coordinator group. A get reads from
//! any holder, verifying every chunk, and moves on to the next holder (from
//! the same offset) if one fails.

pub mod blobs;
pub mod placement;
pub mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_coordinator::Coordinator;
use idunno_membership::MembershipHandle;
use idunno_rpc::SdfsClient;
use tonic::transport::{Channel, Endpoint};

pub use crate::blobs::{BlobError, BlobStore};

/// Settings of the file system.
#[derive(Clone, Debug)]
pub struct SdfsConfig {
    /// Copies of every file (4: three simultaneous failures lose nothing).
    pub replicas: usize,
    /// Versions kept per file.
    pub keep_versions: u32,
}

impl Default for SdfsConfig {
    fn default() -> Self {
        SdfsConfig { replicas: 4, keep_versions: idunno_coordinator::state::DEFAULT_KEEP_VERSIONS }
    }
}

/// One node's part of SDFS.
pub struct Sdfs {
    pub store: BlobStore,
    pub me: u64,
    pub config: SdfsConfig,
    coordinator: Arc<Coordinator>,
    membership: MembershipHandle,
    /// Connections to other nodes, by address (tonic reconnects them).
    peers: Mutex<HashMap<String, SdfsClient<Channel>>>,
}

impl Sdfs {
    pub fn new(
        store: BlobStore,
        me: u64,
        config: SdfsConfig,
        coordinator: Arc<Coordinator>,
        membership: MembershipHandle,
    ) -> Sdfs {
        Sdfs { store, me, config, coordinator, membership, peers: Mutex::new(HashMap::new()) }
    }

    /// Live members (alive or suspect) by id, with their RPC address.
    pub fn live_nodes(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = self
            .membership
            .view()
            .members
            .into_iter()
            .filter(|m| m.state.is_up())
            .map(|m| (m.identity.id.0, m.identity.addr.to_string()))
            .collect();
        v.sort();
        v
    }

    /// The address of node `id`, if membership knows it.
    pub fn addr_of(&self, id: u64) -> Option<String> {
        self.membership.view().members.into_iter().find(|m| m.identity.id.0 == id).map(|m| m.identity.addr.to_string())
    }

    fn peer(&self, addr: &str) -> Result<SdfsClient<Channel>, String> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let c = SdfsClient::new(endpoint.connect_lazy());
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
