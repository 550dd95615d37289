//! Jobs: how an inference job gets into the cluster and how its queries
//! flow through it, and how a training job trains (`train`).
//!
//! - `validate`: `job add` — the model and the input set are read from
//!   SDFS and checked against each other before the job enters the
//!   replicated job table.
//! - `leader`: on the coordinator leader only, the query flow: the
//!   dispatcher (`idunno-scheduler`) hands queries to workers, finished
//!   queries are written to `<job>.results` in SDFS and then counted, all
//!   or none, in the replicated state (exactly once).
//! - `worker`: on every node, the loop that asks the leader for queries
//!   and runs them on ONNX Runtime with cached models and input sets.
//! - `results`, `status`: the documents `job results` and `job status`
//!   print (SPEC §10).
//! - `service`: the `Jobs` gRPC service.
//!
//! **Invariant:** what must survive a crash lives in the coordinator's
//! replicated state or in SDFS; everything in this crate's memory (leases,
//! reports awaiting their commit, caches) is rebuilt or redone after a
//! failure, and the replicated done-ranges make a redone query count once.

mod compact;
mod flow;
mod leader;
mod lru;
pub mod metrics;
pub mod results;
mod rows;
mod served;
pub mod service;
pub mod shards;
mod slot;
mod slots;
pub mod status;
pub mod train;
mod validate;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use idunno_coordinator::Coordinator;
use idunno_membership::MembershipHandle;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a node runs queries and how its leader batches their accounting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Queries this node runs at once, each on its own thread.
    pub slots: usize,
    /// ONNX Runtime threads per query (on a small machine several
    /// single-thread queries beat one query on many threads).
    pub threads: usize,
    /// How often the leader writes results and counts finished queries.
    pub flush_ms: u64,
    /// How long a query may stay with a live worker before it is handed
    /// to another.
    pub lease_ms: u64,
    /// How long a results segment no job names any more (compacted,
    /// replaced by a later pass) is kept for readers that started before,
    /// before the leader deletes it.
    pub segment_grace_ms: u64,
    /// MiB of SDFS data the worker keeps fetched: chunks of input sets
    /// and labels, and model files (the least recently used go first; a
    /// query's own data is kept while it needs it).
    pub cache_mb: u64,
    /// MiB of models each slot keeps loaded, counted by their files'
    /// sizes (a session holds about as much; the least recently used are
    /// unloaded; one bigger than this is still kept while it is used).
    pub models_mb: u64,
    /// MiB of finished queries' results the coordinator leader holds
    /// while they wait to be written to SDFS (and in the write under
    /// way); at this much it hands out no more queries until a write
    /// frees some, so jobs run at the pace their results are stored.
    pub results_mb: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 1,
            threads: 1,
            flush_ms: 200,
            lease_ms: 30_000,
            segment_grace_ms: 60_000,
            cache_mb: 128,
            models_mb: 256,
            results_mb: 64,
        }
    }
}

impl WorkerConfig {
    /// [`WorkerConfig::cache_mb`] in bytes.
    pub(crate) fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// [`WorkerConfig::results_mb`] in bytes.
    pub(crate) fn results_bytes(&self) -> usize {
        usize::try_from(self.results_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// [`WorkerConfig::models_mb`] in bytes.
    pub(crate) fn models_bytes(&self) -> usize {
        usize::try_from(self.models_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.slots == 0 || self.threads == 0 {
            return Err("worker.slots and worker.threads must be at least 1".into());
        }
        if self.flush_ms == 0 || self.lease_ms == 0 {
            return Err("worker.flush_ms and worker.lease_ms must be at least 1".into());
        }
        for (name, mb) in [("cache_mb", self.cache_mb), ("models_mb", self.models_mb), ("results_mb", self.results_mb)]
        {
            if mb == 0 || mb > 1 << 30 {
                return Err(format!("worker.{name} must be from 1 to {}, not {mb}", 1u64 << 30));
            }
        }
        Ok(())
    }
}

/// The jobs layer of one node.
pub struct Jobs {
    id: u64,
    coordinator: Arc<Coordinator>,
    membership: MembershipHandle,
    /// This node's SDFS, called in process.
    sdfs: Arc<idunno_sdfs::Sdfs>,
    config: WorkerConfig,
    leader: leader::Leader,
    /// This node's part in training: rounds it sums as a group's rank 0,
    /// data sets its members share.
    reducer: train::reduce::Reducer,
    train_data: tokio::sync::Mutex<train::runner::DataCache>,
    /// Samples of training sets too large to hold, read by range
    /// (`[worker] cache_mb` of chunks).
    train_rows: tokio::sync::Mutex<rows::RowReader>,
    /// What this node's worker and trainer did, for `/metrics`.
    pub metrics: Arc<metrics::WorkerMetrics>,
    pub train_metrics: metrics::TrainMetrics,
    /// Queries this node's worker holds: running, or run and not yet
    /// delivered to the leader (what a drain waits for).
    held: std::sync::atomic::AtomicUsize,
    /// Where this node's slots take their work from, while the worker runs.
    slot_queue: std::sync::Mutex<Option<Arc<slots::SlotQueue>>>,
    /// Served models' files at hand, and which the slots have loaded.
    served: Arc<slots::ServedFiles>,
    /// How many of this node's slots hold each model loaded.
    loaded_models: Arc<worker::LoadedModels>,
    /// This node's figures of the served models' requests (the serving
    /// layer sets it).
    serve_figures: std::sync::OnceLock<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl Jobs {
    /// Queries this node's worker holds (running, or run and not yet
    /// delivered).
    pub fn queries_held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What this node's caches hold, and their bounds (for `status`).
    pub fn caches(&self) -> idunno_rpc::v1::Caches {
        let held = |kind| self.metrics.cache_bytes.get_or_create(&metrics::CacheLabel { kind }).get().max(0) as u64;
        idunno_rpc::v1::Caches {
            inputs: held("inputs"),
            models: held("models"),
            training: held("training"),
            limit: self.config.cache_bytes() as u64,
            models_limit: self.config.models_bytes() as u64,
        }
    }

    pub fn new(
        id: u64,
        coordinator: Arc<Coordinator>,
        membership: MembershipHandle,
        sdfs: Arc<idunno_sdfs::Sdfs>,
        config: WorkerConfig,
    ) -> Arc<Jobs> {
        let leader = leader::Leader::new(&config);
        let train_rows = tokio::sync::Mutex::new(rows::RowReader::new(config.cache_bytes()));
        Arc::new(Jobs {
            id,
            coordinator,
            membership,
            sdfs,
            config,
            leader,
            reducer: Default::default(),
            train_data: Default::default(),
            train_rows,
            metrics: Default::default(),
            train_metrics: Default::default(),
            held: Default::default(),
            slot_queue: Default::default(),
            served: Default::default(),
            loaded_models: Default::default(),
            serve_figures: Default::default(),
        })
    }

    /// Where `serve status` gets this node's figures of served models.
    pub fn on_serve_figures(&self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        let _ = self.serve_figures.set(Box::new(f));
    }

    /// Run a served model's batch on this node's slots, as its `Infer`
    /// call does, for a caller in this process (the node's own entry
    /// point, which then neither encodes the tensors nor crosses a socket).
    pub async fn infer(
        self: &Arc<Self>,
        batch: idunno_rpc::v1::InferBatch,
        timeout: Duration,
    ) -> Result<idunno_rpc::v1::InferBatchReply, tonic::Status> {
        served::infer(self, batch, Some(timeout)).await
    }

    /// `serve status`: every served model with the figures of every node
    /// that answered (the dashboard's `/api/serve`).
    pub async fn serve_status(self: &Arc<Self>) -> serde_json::Value {
        served::status(self).await
    }

    fn serve_figures(&self) -> serde_json::Value {
        self.serve_figures.get().map_or_else(|| serde_json::json!({}), |f| f())
    }

    /// The leader's lease table is consistent: no stream position is
    /// leased twice, or both leased and done (checked by the whole-cluster
    /// simulation after every step). Ok on a node that does not lead.
    pub fn check_leases(&self) -> Result<(), String> {
        self.leader.check()
    }

    /// Start the leader's query flow (active only while this node leads)
    /// and the worker.
    ///
    /// Each runs supervised: a task that panics (a bug that one request or
    /// one query hit) is logged and started again, so the node keeps its
    /// worker and its leader duties rather than carrying on without them.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<(&'static str, JoinHandle<()>)> {
        let me = self.clone();
        let worker = self.clone();
        let groups = self.clone();
        let member = self.clone();
        vec![
            ("job leader", supervise("job leader", shutdown.clone(), move |s| leader::run(me.clone(), s))),
            ("worker", supervise("worker", shutdown.clone(), move |s| worker::run(worker.clone(), s))),
            (
                "training groups",
                supervise("training groups", shutdown.clone(), move |s| train::group::run(groups.clone(), s)),
            ),
            ("training member", supervise("training member", shutdown, move |s| train::runner::run(member.clone(), s))),
        ]
    }
}

/// Run the task `make` builds (given a child of `shutdown`) until it
/// returns, starting it again a second after it panics.
fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, make: F) -> JoinHandle<()>
where
    F: Fn(CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make(shutdown.child_token())).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let why = panic_text(e.into_panic().as_ref());
                    tracing::error!(task = name, panic = %why, "task panicked: starting it again");
                }
                Err(_) => return,
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// The message a panic carried, if it is text.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The wall clock in ms since the epoch (the leader's clock enters the
/// replicated state only inside commands).
pub(crate) fn now_ms() -> u64 {
    idunno_net::now_ms()
}

pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The encoded size of the results one `Work` call carries at most: a
/// message, less room for the rest of the request. One query's outputs
/// must fit in it on their own, which bounds a job's batch size; more
/// results than fit go in the next calls.
pub(crate) const RESULTS_BUDGET: usize = idunno_rpc::limits::MAX_MESSAGE - (1 << 20);
