//! One idunno node: every node is a member, (later) a storage server and a
//! worker. This crate composes the layers; it holds no protocol logic.
//!
//! Start-up is linear and logged (data folder, identity, sockets,
//! membership, servers, join); shutdown runs in reverse. `main` only parses
//! flags and calls [`Node::start`] then [`Node::run`].

pub mod config;
pub mod drain;
mod history;
mod http;
pub mod join;
pub mod metrics;
mod service;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idunno_coordinator::Coordinator;
use idunno_membership::{DriverOptions, MembershipHandle, NodeId, NodeIdentity, Swim};
use idunno_net::{TcpListener, UdpSocket};
use idunno_rpc::Limited;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::config::{ConfigError, NodeConfig, NodeOptions};
use crate::service::{NodeService, Shared};

/// Why a node could not start or run. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data folder {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("data folder {path} is in format {found}; this node reads format {reads} ({hint})")]
    DataFormat { path: PathBuf, found: String, reads: u32, hint: &'static str },
    #[error("data folder {path} belongs to node {stored}, not node {given}")]
    IdMismatch { path: PathBuf, stored: u64, given: u64 },
    #[error("{what} address {addr} is already in use")]
    AddrInUse { what: &'static str, addr: SocketAddr },
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
    #[error("could not join through {seeds}: {why}{foreign}")]
    JoinFailed { seeds: String, why: join::JoinError, foreign: String },
    #[error("membership: {0}")]
    Membership(String),
    #[error("sdfs: {0}")]
    Sdfs(String),
    #[error("coordinator: {0}")]
    Coordinator(#[from] idunno_coordinator::CoordError),
    #[error("{0}")]
    Secret(#[from] idunno_auth::SecretError),
    #[error(transparent)]
    Tls(#[from] idunno_auth::tls::TlsError),
}

impl NodeError {
    /// The operator's input was wrong (as opposed to the environment).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            NodeError::Config(_) | NodeError::IdMismatch { .. } | NodeError::Secret(_) | NodeError::DataFormat { .. }
        )
    }
}

/// A running node and a handle to each of its layers.
pub struct Node {
    pub config: NodeConfig,
    pub identity: NodeIdentity,
    /// Membership: the member view, events, join and leave.
    pub membership: MembershipHandle,
    /// The coordinator group member: replicated cluster state.
    pub coordinator: Arc<Coordinator>,
    /// This node's part of SDFS, with the in-process file API.
    pub sdfs: Arc<idunno_sdfs::Sdfs>,
    /// Inference jobs: the query flow (when leading) and the worker.
    pub jobs: Arc<idunno_jobs::Jobs>,
    /// The cluster secret's keys, replaced on SIGHUP (`None`: no secret).
    pub keys: Option<idunno_auth::KeysCell>,
    /// Cancelled to stop every task of the node.
    shutdown: CancellationToken,
    /// Cancelled when the node was asked to leave over RPC.
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Node {
    /// Bring the node up. On error everything started so far is stopped.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir { path: dir.clone(), source })?;
        check_data_format(dir)?;
        let id = node_id(dir, config.id)?;
        let generation = next_generation(dir)?;
        let identity = NodeIdentity { id, addr: config.advertise, generation };
        tracing::info!(?identity, data_dir = %dir.display(), "starting node");

        // The keys first: everything that talks to another node uses them.
        let keys = match &config.secret {
            Some(files) => {
                let ring = files.read()?;
                tracing::info!(primary = %ring.primary.key_id_hex(), accepted = ring.accepted.len(), "cluster secret loaded");
                let http = config.tls.as_ref().map(|t| t.read()).transpose()?;
                Some(idunno_auth::KeysCell::new(idunno_auth::Keys::for_node_with(ring, http.as_ref())?))
            }
            None => {
                tracing::warn!("no cluster secret: listening on loopback only, without encryption");
                None
            }
        };
        idunno_net::use_keys(keys.clone());
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));

        let udp = bind_udp(config.addr).await?;
        let rpc = bind_tcp("rpc", config.addr).await?;
        let http = bind_tcp("http", config.http).await?;
        tracing::info!(rpc = %config.addr, http = %config.http, advertise = %config.advertise, "listening");

        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        let swim = Swim::new(identity.clone(), &config.swim, generation ^ id.0.rotate_left(32))
            .map_err(|e| NodeError::Membership(e.to_string()))?;
        let options = DriverOptions {
            cluster_tag: idunno_membership::cluster_tag(&config.cluster),
            loss: config.udp_loss,
            seed: generation,
            keys: keys.clone(),
            protocol: config.wire_protocol,
        };
        if config.udp_loss > 0.0 {
            tracing::warn!(loss = config.udp_loss, "dropping outgoing SWIM datagrams on purpose");
        }
        let (membership, swim_task) = idunno_membership::spawn(udp, swim, options, shutdown.child_token());
        let mut tasks = vec![("membership", swim_task)];

        // A node told to join nobody (or named the founder) founds the
        // group if it has no state; every other node waits for a leader to
        // add it.
        let bootstrap = config.founds;
        let coordinator = match Coordinator::start(
            id.0,
            &config.cluster,
            config.advertise,
            &dir.join("raft"),
            bootstrap,
            &config.raft,
        )
        .await
        {
            Ok(c) => Arc::new(c),
            Err(e) => {
                shutdown.cancel();
                return Err(e.into());
            }
        };
        tasks.push(("events", coordinator.spawn_events(membership.clone(), shutdown.child_token())));
        tasks.push((
            "group repair",
            coordinator.spawn_repair(membership.clone(), config.voters, shutdown.child_token()),
        ));

        let store = match idunno_sdfs::BlobStore::open(&dir.join("sdfs")) {
            Ok(s) => s,
            Err(e) => {
                shutdown.cancel();
                return Err(NodeError::Sdfs(e.to_string()));
            }
        };
        let sdfs =
            Arc::new(idunno_sdfs::Sdfs::new(store, id.0, config.sdfs.clone(), coordinator.clone(), membership.clone()));
        tasks.push(("sdfs repair", sdfs.spawn_repair(shutdown.child_token())));
        tasks.push(("sdfs gc", sdfs.spawn_gc(shutdown.child_token())));
        let jobs =
            idunno_jobs::Jobs::new(id.0, coordinator.clone(), membership.clone(), sdfs.clone(), config.worker.clone());
        tasks.extend(jobs.spawn(shutdown.child_token()));
        let serving = idunno_serve::Serving::new(coordinator.clone(), membership.clone(), shutdown.child_token());
        let stats = serving.stats.clone();
        jobs.on_serve_figures(move || stats.raw());
        let local = jobs.clone();
        serving.set_local(
            id.0,
            Arc::new(move |batch, timeout| {
                let jobs = local.clone();
                Box::pin(async move { jobs.infer(batch, timeout).await })
            }),
        );
        let jobs_layer = jobs.clone();
        let sdfs_layer = sdfs.clone();
        tasks.push((
            "drain",
            drain::spawn(
                coordinator.clone(),
                membership.clone(),
                jobs.clone(),
                idunno_sdfs::placement::write_quorum(config.sdfs.replicas),
                stop.clone(),
                shutdown.child_token(),
            ),
        ));

        let shared = Shared {
            identity: identity.clone(),
            http: advertised_http(config.http, config.advertise),
            membership: membership.clone(),
            coordinator: coordinator.clone(),
            stop: stop.clone(),
            keys: keys.clone(),
            refused: refused.clone(),
            protocol: config.wire_protocol.unwrap_or(idunno_membership::PROTOCOL),
            jobs: jobs.clone(),
        };
        // Unary calls are bounded by a deadline, bulk transfers by their
        // progress (idunno_rpc::limits).
        let incoming = match &keys {
            Some(k) => rpc.incoming_tls(k.clone(), refused.clone()),
            None => rpc.incoming(),
        };
        let grpc = tonic::transport::Server::builder()
            .layer(idunno_rpc::auth::AuthLayer::new(keys.is_some(), refused.clone()).with_tokens(keys.clone()))
            .layer(idunno_rpc::limits::DeadlineLayer)
            .initial_stream_window_size(Some(idunno_sdfs::WINDOW))
            .initial_connection_window_size(Some(4 * idunno_sdfs::WINDOW))
            .max_frame_size(idunno_net::MAX_FRAME)
            .add_service(idunno_rpc::NodeServer::new(NodeService(shared.clone())).limited())
            .add_service(
                idunno_rpc::RaftServer::new(idunno_coordinator::network::RaftService {
                    raft: coordinator.raft().clone(),
                    cluster: config.cluster.clone(),
                })
                .limited(),
            )
            .add_service(
                idunno_rpc::CoordinatorServer::new(idunno_coordinator::service::CoordinatorService(
                    coordinator.clone(),
                ))
                .limited(),
            )
            .add_service(idunno_rpc::SdfsServer::new(idunno_sdfs::service::SdfsService(sdfs.clone())).limited())
            .add_service(idunno_rpc::JobsServer::new(idunno_jobs::service::JobsService(jobs)).limited())
            .add_service(
                idunno_rpc::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(
                    idunno_serve::grpc::InferenceService(serving.clone()),
                )
                .max_decoding_message_size(idunno_rpc::limits::MAX_MESSAGE)
                .max_encoding_message_size(idunno_rpc::limits::MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, shutdown.child_token().cancelled_owned());
        tasks.push((
            "rpc",
            tokio::spawn(async move {
                if let Err(e) = grpc.await {
                    tracing::error!(error = %e, "rpc server");
                }
            }),
        ));
        // A simulated host has no HTTP server (nothing in a simulation reads it).
        if let Some(http) = http.into_os() {
            let history = Arc::new(std::sync::Mutex::new(history::History::default()));
            tasks.push(("history", spawn_history(coordinator.clone(), history.clone(), shutdown.child_token())));
            let web = http::Web {
                metrics: Arc::new(metrics::NodeMetrics::new(&shared, &sdfs_layer, &jobs_layer, serving.stats.clone())),
                shared,
                history,
                replicas: config.sdfs.replicas,
                metrics_public: config.metrics_public,
                serving,
                jobs: jobs_layer.clone(),
                serve_cache: Default::default(),
            };
            let serve = http::serve(http, web, keys.clone(), refused.clone(), shutdown.child_token());
            tasks.push(("http", tokio::spawn(serve)));
        }

        let mut node = Node {
            config,
            identity,
            membership,
            coordinator,
            sdfs: sdfs_layer,
            jobs: jobs_layer,
            keys,
            shutdown,
            stop,
            tasks,
        };
        if !node.config.join.is_empty() {
            let seeds = node.config.join.clone();
            tracing::info!(?seeds, "joining");
            let own = [node.config.advertise, node.config.addr];
            let joining = {
                let (membership, coordinator) = (node.membership.clone(), node.coordinator.clone());
                let limit = node.config.join_timeout;
                let ours = node.config.wire_protocol.unwrap_or(idunno_membership::PROTOCOL);
                async move {
                    let leader_known = || coordinator.status().leader.is_some();
                    join::join(&membership, &seeds, &own, leader_known, limit).await.map_err(|why| {
                        NodeError::JoinFailed { seeds: seeds.join(", "), why, foreign: foreign_note(&membership, ours) }
                    })
                }
            };
            match node.config.join_timeout {
                // A limit: the node is up only once it has joined.
                Some(_) => {
                    if let Err(e) = joining.await {
                        node.stop_tasks().await;
                        return Err(e);
                    }
                }
                // None: serve now and keep trying in the background.
                None => {
                    let stop = node.shutdown.child_token();
                    node.tasks.push((
                        "join",
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                r = joining => if let Err(e) = r { tracing::error!(error = %e, "join") },
                            }
                        }),
                    ));
                }
            }
        }
        Ok(node)
    }

    /// Serve until SIGTERM, Ctrl-C, or a client's `member leave`; then
    /// leave the group gracefully and stop.
    pub async fn run(self) -> Result<(), NodeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| NodeError::Membership(format!("cannot watch SIGTERM: {e}")))?;
        let mut hup =
            signal(SignalKind::hangup()).map_err(|e| NodeError::Membership(format!("cannot watch SIGHUP: {e}")))?;
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: leaving the group"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: leaving the group"),
                _ = self.stop.cancelled() => {}
                _ = hup.recv() => {
                    self.reload_keys();
                    continue;
                }
            }
            break;
        }
        // A no-op if a client's leave already did it.
        let _ = self.membership.leave().await;
        // Let the leave notices go out before the socket closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop_tasks().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// SIGHUP: read the secret files again and use the keys they give from
    /// now on (a key rotation step, `docs/security.md`). Connections
    /// already open keep their keys. A file that cannot be read changes
    /// nothing.
    pub fn reload_keys(&self) {
        let (Some(cell), Some(files)) = (&self.keys, &self.config.secret) else {
            tracing::warn!("SIGHUP: this node has no cluster secret; nothing to reload");
            return;
        };
        match files.read().map_err(NodeError::from).and_then(|ring| {
            let ids: Vec<String> = ring.all().map(|s| s.key_id_hex()).collect();
            let http = self.config.tls.as_ref().map(|t| t.read()).transpose()?;
            Ok((idunno_auth::Keys::for_node_with(ring, http.as_ref())?, ids))
        }) {
            Ok((keys, ids)) => {
                cell.replace(keys);
                tracing::info!(keys = ?ids, "SIGHUP: keys reloaded (primary first)");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: keys not reloaded; keeping the old ones"),
        }
    }

    /// Stop every task of the node without leaving the group first (as a
    /// crash looks to the others, but with the disk left consistent).
    pub async fn shutdown(self) {
        self.stop_tasks().await
    }

    async fn stop_tasks(self) {
        self.coordinator.shutdown().await;
        self.shutdown.cancel();
        for (name, task) in self.tasks.into_iter().rev() {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!(task = name, "did not stop within 5 s");
            }
        }
    }
}

/// Sample the state for the dashboard once a second.
fn spawn_history(
    coordinator: Arc<Coordinator>,
    history: Arc<std::sync::Mutex<history::History>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let data = coordinator.local_state();
            history.lock().unwrap_or_else(|e| e.into_inner()).sample(idunno_net::now_ms(), &data.state);
        }
    })
}

async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, NodeError> {
    UdpSocket::bind(addr).await.map_err(|source| bind_error("swim (udp)", addr, source))
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| bind_error(what, addr, source))
}

fn bind_error(what: &'static str, addr: SocketAddr, source: io::Error) -> NodeError {
    if source.kind() == io::ErrorKind::AddrInUse {
        NodeError::AddrInUse { what, addr }
    } else {
        NodeError::Bind { what, addr, source }
    }
}

/// The node's id: the one given, checked against the data folder, or the
/// one the folder remembers, or a new random one that it will remember.
/// The layout of a data folder (its `FORMAT` file): raised when a new
/// build lays out or reads the folder (the Raft store, SDFS blobs, the
/// identity files) in a way an older build would misread. A folder from
/// before the file existed is format 1.
pub const DATA_FORMAT: u32 = 1;

/// Refuse a data folder laid out by another build, before anything in it
/// is read or written; stamp a folder that has no format yet.
fn check_data_format(dir: &Path) -> Result<(), NodeError> {
    let path = dir.join("FORMAT");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return write_atomic(&path, &format!("{DATA_FORMAT}\n"));
        }
        Err(source) => return Err(NodeError::DataDir { path, source }),
    };
    match text.trim().parse::<u32>() {
        Ok(DATA_FORMAT) => Ok(()),
        Ok(found) => Err(NodeError::DataFormat {
            path: dir.to_path_buf(),
            found: found.to_string(),
            reads: DATA_FORMAT,
            hint: if found > DATA_FORMAT {
                "written by a newer idunno: run that version, or restore a backup"
            } else {
                "written by an older idunno: upgrade through the versions between, see docs/deploy.md"
            },
        }),
        Err(_) => Err(NodeError::DataFormat {
            path: dir.to_path_buf(),
            found: format!("{:?} (not a number)", text.chars().take(40).collect::<String>()),
            reads: DATA_FORMAT,
            hint: "the FORMAT file is damaged",
        }),
    }
}

fn node_id(dir: &Path, given: Option<NodeId>) -> Result<NodeId, NodeError> {
    let path = dir.join("node_id");
    let stored = read_u64(&path)?;
    let id = match (stored, given) {
        (Some(s), Some(g)) if s != g.0 => {
            return Err(NodeError::IdMismatch { path: dir.to_path_buf(), stored: s, given: g.0 });
        }
        (_, Some(g)) => g,
        (Some(s), None) => NodeId(s),
        // Small enough to be exact in JSON and JavaScript.
        (None, None) => NodeId(rand::random::<u32>() as u64 + 1),
    };
    if stored.is_none() {
        write_atomic(&path, &id.0.to_string())?;
    }
    Ok(id)
}

/// A generation larger than any this data folder has used: the wall clock
/// in milliseconds, or one more than the last if the clock went back.
fn next_generation(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join("generation");
    let last = read_u64(&path)?.unwrap_or(0);
    let now = idunno_net::now_ms();
    let generation = now.max(last + 1);
    write_atomic(&path, &generation.to_string())?;
    Ok(generation)
}

fn read_u64(path: &Path) -> Result<Option<u64>, NodeError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| NodeError::DataDir {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NodeError::DataDir { path: path.to_path_buf(), source }),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let err = |source| NodeError::DataDir { path: path.to_path_buf(), source };
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// What a failed join says about peers of another wire protocol.
fn foreign_note(membership: &MembershipHandle, ours: u8) -> String {
    let foreign = membership.foreign_protocols();
    if foreign.is_empty() {
        return String::new();
    }
    let list: Vec<String> = foreign.iter().map(|(a, p)| format!("{a} speaks protocol {p}")).collect();
    format!(
        "; {}, this node speaks protocol {}: run one version across the cluster (docs/deploy.md, upgrades)",
        list.join(", "),
        ours
    )
}

/// The dashboard's address as others reach it: an HTTP server bound to
/// every interface is reached at the advertised host.
fn advertised_http(http: SocketAddr, advertise: SocketAddr) -> SocketAddr {
    if http.ip().is_unspecified() { SocketAddr::new(advertise.ip(), http.port()) } else { http }
}

/// How many malloc arenas a node's allocator keeps (glibc's default is 8
/// per core: each thread that allocates may get one, and each keeps the
/// high-water mark of what its thread ever freed). Measured on a node
/// serving EfficientNet-Lite0: 181 MiB RSS with the default, 120 MiB with
/// one arena (`docs/jobs.md`, memory).
pub const MALLOC_ARENAS: i32 = 2;

/// Cap the allocator's arenas at [`MALLOC_ARENAS`], before any thread
/// starts, unless the operator chose with `MALLOC_ARENA_MAX`.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before the runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
