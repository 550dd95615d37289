//! What this node's worker did, for `/metrics`: per node (add them up
//! across nodes: `sum by (job)`, and for the latency histogram `sum by
//! (job, le)` before `histogram_quantile`). The jobs' progress as the
//! cluster counted it is cluster-wide and read from the state by the node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub job: String,
    /// `ok`, or `error` (the query failed on this worker and is run again).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    pub model: String,
    /// `ok`, or `error` (the batch failed here).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelFileLabel {
    /// The model file in SDFS.
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `inputs` (chunks of input sets and labels), `models` (model files)
    /// or `training` (chunks of training sets read by range).
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms to ~100 s: a tiny model's batch to a large one's.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

fn load_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
pub struct WorkerMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub inputs: Family<JobLabel, Counter>,
    pub latency: Family<JobLabel, Histogram, fn() -> Histogram>,
    pub busy_seconds: Family<JobLabel, Counter<f64>>,
    pub model_load: Histogram,
    pub cache_bytes: Family<CacheLabel, Gauge>,
    /// Batches of served models this worker ran, and its slots' time on them.
    pub served_batches: Family<ServedLabels, Counter>,
    pub served_busy_seconds: Family<JobLabel, Counter<f64>>,
    /// Slots that hold each served model loaded.
    pub served_slots: Family<ModelFileLabel, Gauge>,
    /// While this node leads: queries of dead workers put back in the
    /// queue, and leases that ran out.
    pub requeued: Counter,
    pub expired: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            queries: Family::default(),
            inputs: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            busy_seconds: Family::default(),
            model_load: load_histogram(),
            cache_bytes: Family::default(),
            served_batches: Family::default(),
            served_busy_seconds: Family::default(),
            served_slots: Family::default(),
            requeued: Counter::default(),
            expired: Counter::default(),
        }
    }
}

impl WorkerMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "worker_queries",
            "Queries this node's worker ran, by job and outcome (a query run again after a failure counts again here, once in the job's count)",
            self.queries.clone(),
        );
        reg.register("worker_inputs", "Inputs of the queries this worker ran without error", self.inputs.clone());
        reg.register(
            "worker_query_duration_seconds",
            "Processing time of a query on this worker, input rows to outputs (the job's C2 latency)",
            self.latency.clone(),
        );
        reg.register(
            "worker_busy_seconds",
            "Time this worker's slots spent on each job's queries (its share of the worker)",
            self.busy_seconds.clone(),
        );
        reg.register(
            "worker_model_load_duration_seconds",
            "Time to load a model into a worker slot",
            self.model_load.clone(),
        );
        reg.register(
            "worker_served_batches",
            "Request batches of served models this worker ran, by model file and outcome",
            self.served_batches.clone(),
        );
        reg.register(
            "worker_served_busy_seconds",
            "Time this worker's slots spent on each served model's batches (its share of the worker)",
            self.served_busy_seconds.clone(),
        );
        reg.register(
            "worker_served_slots",
            "Worker slots of this node that hold the served model loaded (by model file): 0 where the leader did not place it",
            self.served_slots.clone(),
        );
        reg.register(
            "worker_cache_bytes",
            "Bytes of input sets and model files this worker keeps in memory",
            self.cache_bytes.clone(),
        );
        reg.register(
            "leader_requeued_queries",
            "Queries of dead workers this node, as leader, put back in the queue (retries)",
            self.requeued.clone(),
        );
        reg.register(
            "leader_expired_leases",
            "Query leases that ran out while this node led (the queries ran again)",
            self.expired.clone(),
        );
    }

    /// Count a served model's batch a slot ran, and how long it was busy.
    pub(crate) fn served(&self, model: &str, ok: bool, busy: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.served_batches.get_or_create(&ServedLabels { model: model.to_string(), outcome }).inc();
        self.served_busy_seconds.get_or_create(&JobLabel { job: model.to_string() }).inc_by(busy);
    }

    /// Count a query a slot ran, and how long the slot was busy with it.
    pub(crate) fn ran(&self, job: &str, ok: bool, inputs: u64, latency_us: u64, busy: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.queries.get_or_create(&QueryLabels { job: job.to_string(), outcome }).inc();
        let label = JobLabel { job: job.to_string() };
        self.busy_seconds.get_or_create(&label).inc_by(busy);
        if ok {
            self.inputs.get_or_create(&label).inc_by(inputs);
            self.latency.get_or_create(&label).observe(latency_us as f64 / 1e6);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub job: String,
    /// `compute` (this member's shard), `round_wait` (the all-reduce),
    /// `apply` (the optimizer step).
    pub phase: &'static str,
}

/// What this node did as a member of training groups (per node).
#[derive(Debug, Default)]
pub struct TrainMetrics {
    pub steps: Family<JobLabel, Counter>,
    pub step_seconds: Family<PhaseLabels, Counter<f64>>,
}

impl TrainMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register("train_member_steps", "Training steps this node took part in", self.steps.clone());
        reg.register(
            "train_step_seconds",
            "Time this node spent in training steps, by phase (compute, round_wait, apply)",
            self.step_seconds.clone(),
        );
    }

    pub(crate) fn step(&self, job: &str, compute: f64, wait: f64, apply: f64) {
        self.steps.get_or_create(&JobLabel { job: job.to_string() }).inc();
        for (phase, s) in [("compute", compute), ("round_wait", wait), ("apply", apply)] {
            self.step_seconds.get_or_create(&PhaseLabels { job: job.to_string(), phase }).inc_by(s);
        }
    }
}
