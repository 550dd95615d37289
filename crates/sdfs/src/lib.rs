//! SDFS, the cluster's file system: every file version is a blob (content
//! named by its BLAKE3) on several nodes, and the namespace (name →
//! versions → size, checksum, holders) lives in the coordinator's
//! replicated state.
//!
//! - `placement`: which nodes hold a file (sans-IO).
//! - `blobs`: one node's replicas on disk, chunk-checksummed.
//! - `repair`: which versions lost replicas and where copies go (sans-IO).
//! - `read`, `write`: the in-process API other layers call on their own
//!   node's [`Sdfs`] (`find`, `stat`, `list`, `open`, `get`, `put`,
//!   `put_stream`, `delete`, with [`SdfsError`]).
//! - `service`: the gRPC service, a thin adapter over that API for
//!   clients (any node coordinates), and node-to-node blob transfer.
//! - `client`: the same operations from another process (the CLI).
//!
//! A put streams the bytes to the chosen replicas in parallel, and is
//! acknowledged only once a majority of them hold the bytes durably *and*
//! the new version is committed in the coordinator group. A get reads from
//! any holder, verifying every chunk, and moves on to the next holder (from
//! the same offset) if one fails.

pub mod blobs;
pub mod client;
mod error;
pub mod metrics;
pub mod placement;
mod read;
pub mod repair;
pub mod service;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_coordinator::Coordinator;
use idunno_membership::MembershipHandle;
use idunno_rpc::v1;
use idunno_rpc::{Limited, SdfsClient};
use idunno_state::{EventKind, FileCommand};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use crate::blobs::{BlobError, BlobStore, ChunkSums};
pub use crate::error::SdfsError;
pub use crate::read::{Download, LIST_PAGE, LIST_PAGE_MAX, Listed};
pub use crate::write::Stored;

/// Tombstones dropped by one command (a bounded log entry).
const FORGET_BATCH: usize = 1000;

/// HTTP/2 flow-control window for blob streams: several chunks in flight
/// per stream, so a transfer is not paced by window updates.
pub const WINDOW: u32 = 8 << 20;

/// Settings of the file system (the `[sdfs]` section of a node config).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SdfsConfig {
    /// Copies of every file (4: three simultaneous failures lose nothing).
    pub replicas: usize,
    /// Versions kept per file.
    pub keep_versions: u32,
    /// A blob no version refers to is deleted once it is this old: old
    /// enough that it cannot be a put whose commit is still on its way.
    pub gc_grace_ms: u64,
    /// How often each node looks for such blobs (and the leader for
    /// tombstones).
    pub gc_every_ms: u64,
    /// A deleted name's entry (its tombstone, which keeps its version
    /// numbers from being reused) is dropped this long after the delete,
    /// once every member of the coordinator group holds the delete.
    pub tombstone_grace_ms: u64,
}

impl Default for SdfsConfig {
    fn default() -> Self {
        SdfsConfig {
            replicas: 4,
            keep_versions: idunno_state::DEFAULT_KEEP_VERSIONS,
            gc_grace_ms: 10 * 60 * 1000,
            gc_every_ms: 30 * 1000,
            tombstone_grace_ms: 10 * 60 * 1000,
        }
    }
}

impl SdfsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 {
            return Err("sdfs.replicas: every file needs at least 1 copy".into());
        }
        if self.keep_versions == 0 {
            return Err("sdfs.keep_versions: at least the newest version must be kept".into());
        }
        if self.gc_every_ms == 0 {
            return Err("sdfs.gc_every_ms must be > 0".into());
        }
        Ok(())
    }
}

/// One node's part of SDFS.
pub struct Sdfs {
    pub store: BlobStore,
    pub me: u64,
    pub config: SdfsConfig,
    pub(crate) coordinator: Arc<Coordinator>,
    membership: MembershipHandle,
    /// Connections to other nodes, by address (tonic reconnects them).
    peers: Mutex<HashMap<String, SdfsClient<Channel>>>,
    /// What this node did, for `/metrics`.
    pub metrics: metrics::SdfsMetrics,
    /// Verified chunk checksums of the versions read by range lately.
    sums_cache: SumsCache,
}

/// Chunk checksums kept for range reads, by blob, bounded by bytes (32
/// bytes a chunk: the default holds those of 2 TiB of files); the least
/// recently used go first.
struct SumsCache {
    entries: Mutex<HashMap<String, (Arc<blobs::ChunkSums>, u64)>>,
    tick: std::sync::atomic::AtomicU64,
    budget: usize,
}

impl Default for SumsCache {
    fn default() -> Self {
        SumsCache { entries: Mutex::default(), tick: Default::default(), budget: 64 << 20 }
    }
}

impl SumsCache {
    fn get(&self, hash: &str) -> Option<Arc<blobs::ChunkSums>> {
        let now = self.tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.get_mut(hash)?;
        e.1 = now;
        Some(e.0.clone())
    }

    fn insert(&self, hash: String, sums: Arc<blobs::ChunkSums>) {
        let now = self.tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(hash, (sums, now));
        while m.values().map(|(s, _)| s.bytes()).sum::<usize>() > self.budget && m.len() > 1 {
            let oldest = m.iter().min_by_key(|(_, (_, t))| *t).map(|(h, _)| h.clone());
            oldest.map(|h| m.remove(&h));
        }
    }
}

/// The versions last said to be under-replicated, and when.
#[derive(Default)]
struct Reported {
    versions: Vec<(String, u64)>,
    at: Option<tokio::time::Instant>,
}

/// How often a changing set of under-replicated versions is put on the
/// timeline, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Sdfs {
    pub fn new(
        store: BlobStore,
        me: u64,
        config: SdfsConfig,
        coordinator: Arc<Coordinator>,
        membership: MembershipHandle,
    ) -> Sdfs {
        let metrics = metrics::SdfsMetrics::default();
        Sdfs {
            store,
            me,
            config,
            coordinator,
            membership,
            peers: Mutex::new(HashMap::new()),
            metrics,
            sums_cache: SumsCache::default(),
        }
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

    /// Live nodes a new copy may go to: not those being drained.
    pub fn placeable_nodes(&self) -> Vec<u64> {
        let state = self.coordinator.local_state();
        let live = self.live_nodes().into_iter().map(|(id, _)| id);
        live.filter(|id| !state.state.nodes.is_draining(*id)).collect()
    }

    /// The address of node `id`, if membership knows it.
    pub fn addr_of(&self, id: u64) -> Option<String> {
        self.membership.view().members.into_iter().find(|m| m.identity.id.0 == id).map(|m| m.identity.addr.to_string())
    }

    /// For each term this node leads the coordinator group, restore the
    /// replication factor of every version that lost holders: after each
    /// membership change, and every second (which also picks up copies
    /// dropped as corrupt).
    pub fn spawn_repair(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let leadership = self.coordinator.leadership();
        tokio::spawn(idunno_coordinator::leader_duty(leadership, shutdown, move |_term, stop| {
            let me = me.clone();
            async move {
                let mut view = me.membership.watch();
                let mut last_forget = tokio::time::Instant::now();
                let mut reported = Reported::default();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        // (A membership that stopped would wake this at once, forever.)
                        r = view.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if last_forget.elapsed() >= Duration::from_millis(me.config.gc_every_ms) {
                        last_forget = tokio::time::Instant::now();
                        me.forget_tombstones().await;
                    }
                    let data = me.coordinator.local_state();
                    let live: Vec<u64> = me.live_nodes().into_iter().map(|(id, _)| id).collect();
                    let draining: Vec<u64> =
                        live.iter().copied().filter(|id| data.state.nodes.is_draining(*id)).collect();
                    let tasks = repair::plan(&data.state.namespace.files, &live, &draining, me.config.replicas);
                    me.note_under_replicated(&tasks, &mut reported);
                    let mut round = repair::Round::default();
                    for task in tasks {
                        if stop.is_cancelled() {
                            return;
                        }
                        match me.repair(&task).await {
                            Ok(added) => round.add(&task, &added, me.size_of(&task.name, task.version)),
                            Err(e) => {
                                tracing::warn!(file = task.name, version = task.version, error = %e, "repair failed")
                            }
                        }
                    }
                    if let Some(detail) = round.summary() {
                        let node = round.first_target().unwrap_or(0);
                        me.coordinator.events().record(EventKind::FileRepaired, node, None, detail, None);
                    }
                }
            }
        }))
    }

    /// Drop the tombstones of names deleted more than `tombstone_grace_ms`
    /// ago, in batches, once every member of the group holds the log up to
    /// the state they were read from (so every node applies the delete
    /// before the entry goes). Leader only.
    async fn forget_tombstones(&self) {
        let data = self.coordinator.local_state();
        let now = idunno_net::now_ms();
        let due: Vec<String> = data
            .state
            .namespace
            .files
            .iter()
            .filter(|(_, e)| e.versions.is_empty())
            .filter(|(_, e)| e.deleted_at_ms.is_none_or(|at| at.saturating_add(self.config.tombstone_grace_ms) <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let applied = data.last_applied.map_or(0, |l| l.index);
        if due.is_empty() || !self.coordinator.replicated_everywhere(applied) {
            return;
        }
        for names in due.chunks(FORGET_BATCH) {
            let n = names.len();
            match self.coordinator.apply(FileCommand::ForgetFiles { names: names.to_vec() }).await {
                Ok(_) => tracing::info!(tombstones = n, "deleted names forgotten"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not forget deleted names");
                    return;
                }
            }
        }
    }

    /// Delete, every `gc_every_ms`, the local blobs that no version in the
    /// namespace refers to any more (deleted files, versions pushed out,
    /// puts that never committed) once they are older than `gc_grace_ms`.
    pub fn spawn_gc(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(me.config.gc_every_ms);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match me.collect_garbage() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(blobs = n, "unreferenced blobs deleted"),
                    Err(e) => tracing::warn!(error = %e, "blob garbage collection"),
                }
            }
        })
    }

    /// One pass of [`Self::spawn_gc`]; returns how many blobs went.
    pub fn collect_garbage(&self) -> Result<usize, BlobError> {
        let data = self.coordinator.local_state();
        let referenced: std::collections::HashSet<&str> =
            data.state.namespace.files.values().flat_map(|e| e.versions.iter().map(|v| v.blake3.as_str())).collect();
        let grace = Duration::from_millis(self.config.gc_grace_ms);
        let mut removed = 0;
        for (hash, _) in self.store.list()? {
            if referenced.contains(hash.as_str()) {
                continue;
            }
            if self.store.age(&hash).is_some_and(|age| age >= grace) {
                self.store.remove(&hash)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn size_of(&self, name: &str, version: u64) -> u64 {
        let data = self.coordinator.local_state();
        let entry = data.state.namespace.files.get(name);
        entry.and_then(|e| e.versions.iter().find(|v| v.version == version)).map_or(0, |v| v.size)
    }

    /// Put the versions `tasks` repairs on the timeline, once for each
    /// different set (a loss the leader cannot repair yet is not repeated
    /// every second).
    fn note_under_replicated(&self, tasks: &[repair::RepairTask], reported: &mut Reported) {
        let now: Vec<(String, u64)> = tasks.iter().map(|t| (t.name.clone(), t.version)).collect();
        // New losses are said at once; a set that keeps changing (puts go
        // on while a node is suspected) at most every REPORT_EVERY.
        let recent = reported.at.is_some_and(|t| t.elapsed() < REPORT_EVERY);
        if now.is_empty() || now == reported.versions || (!reported.versions.is_empty() && recent) {
            if now.is_empty() {
                reported.versions.clear();
            }
            return;
        }
        reported.versions = now;
        reported.at = Some(tokio::time::Instant::now());
        let t = &tasks[0];
        let held: Vec<String> = t.sources.iter().map(u64::to_string).collect();
        let detail = format!(
            "{} file version(s) held by fewer than {} live nodes, e.g. {} v{} (on node {})",
            tasks.len(),
            self.config.replicas,
            t.name,
            t.version,
            held.join(", node ")
        );
        self.coordinator.events().record(EventKind::FileUnderReplicated, 0, None, detail, None);
    }

    /// Copy `task`'s version to its new holders and record them; the
    /// holders added.
    async fn repair(&self, task: &repair::RepairTask) -> Result<Vec<u64>, String> {
        let sources: Vec<String> = task.sources.iter().filter_map(|s| self.addr_of(*s)).collect();
        let mut holders = task.sources.clone();
        for node in &task.add {
            let Some(addr) = self.addr_of(*node) else { continue };
            let mut client = self.peer(&addr)?;
            // No deadline: the copy takes as long as it keeps moving (the
            // holder gives up on a silent source after STREAM_IDLE), and a
            // holder that vanished is noticed by the connection's pings.
            let req = v1::FetchBlobRequest { blake3: task.blake3.clone(), sources: sources.clone() };
            match client.fetch_blob(req).await {
                Ok(_) => holders.push(*node),
                Err(e) => tracing::warn!(node, file = task.name, error = %e, "repair copy failed"),
            }
        }
        let added: Vec<u64> = holders.iter().copied().filter(|h| !task.sources.contains(h)).collect();
        let cmd =
            FileCommand::SetReplicas { name: task.name.clone(), version: task.version, replicas: holders.clone() };
        match self.coordinator.apply(cmd).await.map_err(|e| e.to_string())?.applied {
            Ok(_) => {
                tracing::info!(file = task.name, version = task.version, ?holders, "replicas restored");
                let size = self.size_of(&task.name, task.version);
                self.metrics.repairs.inc_by(added.len() as u64);
                self.metrics.repaired_bytes.inc_by(size * added.len() as u64);
                Ok(added)
            }
            Err(refusal) => Err(refusal.to_string()),
        }
    }

    pub(crate) fn peer(&self, addr: &str) -> Result<SdfsClient<Channel>, String> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(4 * WINDOW))
            .max_frame_size(idunno_net::MAX_FRAME);
        let c = SdfsClient::new(idunno_net::lazy_channel(&endpoint)).limited();
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
