//! `/metrics`: the node's Prometheus series, in the classic text format.
//!
//! One registry per node (no process-wide recorder: nodes that share a
//! process in tests keep their own). Two kinds of series, as
//! `docs/observability.md` tells users:
//!
//! - **cluster-wide** (`idunno_job_*`, `idunno_train_*` but the member
//!   ones, `idunno_sdfs_files`…, `idunno_events_total`,
//!   `idunno_serve_ready_workers`): read from this
//!   node's copy of the replicated state at scrape time, so every node
//!   gives the same value once it has applied the same log — take one
//!   node's, or `max()` across nodes, never `sum()`;
//! - **per node** (`idunno_worker_*`, `idunno_sdfs_put*`, `idunno_swim_*`,
//!   `idunno_raft_*`, `idunno_serve_*` but the ready workers, `process_*`…):
//!   what this node did or sees — `sum()`
//!   across nodes for the cluster's total.

use std::sync::Arc;

use idunno_coordinator::Coordinator;
use idunno_membership::{MemberState, MembershipHandle};
use idunno_state::{ClusterState, JobState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::service::Shared;

/// The `le` bounds of the jobs' latency histogram, in seconds: 0.1 ms to
/// ~105 s, doubling.
fn latency_bounds() -> Vec<f64> {
    (0..21).map(|i| 0.0001 * f64::from(1u32 << i)).collect()
}

pub struct NodeMetrics {
    registry: Registry,
}

impl NodeMetrics {
    pub fn new(
        shared: &Shared,
        sdfs: &idunno_sdfs::Sdfs,
        jobs: &idunno_jobs::Jobs,
        served: Arc<idunno_serve::stats::Stats>,
    ) -> NodeMetrics {
        let replicas = sdfs.config.replicas;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Process));
        let reg = registry.sub_registry_with_prefix("idunno");
        sdfs.metrics.register(reg);
        jobs.metrics.register(reg);
        jobs.train_metrics.register(reg);
        reg.register(
            "coordinator_apply_duration_seconds",
            "Time for a write from this node to commit (forwarding to the leader included)",
            shared.coordinator.apply_seconds.clone(),
        );
        reg.register_collector(Box::new(Cluster { coordinator: shared.coordinator.clone() }));
        reg.register_collector(Box::new(Served(served)));
        reg.register_collector(Box::new(NodeView {
            coordinator: shared.coordinator.clone(),
            membership: shared.membership.clone(),
            refused: shared.refused.clone(),
            replicas,
        }));
        NodeMetrics { registry }
    }

    /// The text Prometheus scrapes.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabels {
    job: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// One series of a family, or the family's only value.
enum Value {
    Int(u64),
    Float(f64),
}

/// Write a gauge or counter family: `rows` of (labels, value).
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let mut e = m.encode_family(&labels)?;
        match (kind, v) {
            (MetricType::Counter, Value::Int(n)) => e.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
            (MetricType::Counter, Value::Float(x)) => e.encode_counter::<NoLabelSet, _, f64>(&x, None)?,
            (_, Value::Int(n)) => e.encode_gauge(&(n as i64))?,
            (_, Value::Float(x)) => e.encode_gauge(&x)?,
        }
    }
    Ok(())
}

/// A family with one unlabelled value.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, v: Value) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    match (kind, v) {
        (MetricType::Counter, Value::Int(n)) => m.encode_counter::<NoLabelSet, _, u64>(&n, None),
        (MetricType::Counter, Value::Float(x)) => m.encode_counter::<NoLabelSet, _, f64>(&x, None),
        (_, Value::Int(n)) => m.encode_gauge(&(n as i64)),
        (_, Value::Float(x)) => m.encode_gauge(&x),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelErrorLabels {
    model: String,
    kind: &'static str,
}

/// The served models' requests that arrived at this node (`idunno serve`).
#[derive(Debug)]
struct Served(Arc<idunno_serve::stats::Stats>);

impl Collector for Served {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let counts = self.0.counts();
        let label = |n: &String| ModelLabel { model: n.clone() };
        let per = |f: &dyn Fn(&idunno_serve::stats::ModelCounts) -> u64| {
            counts.iter().map(|(n, c)| (label(n), Value::Int(f(c)))).collect::<Vec<_>>()
        };
        let enc = &mut enc;
        family(
            enc,
            "serve_requests",
            "Requests to the served model answered by this node",
            Counter,
            per(&|c| c.requests),
        )?;
        let errors = counts.iter().flat_map(|(n, c)| {
            c.errors.iter().map(|(kind, v)| (ModelErrorLabels { model: n.clone(), kind }, Value::Int(*v)))
        });
        family(
            enc,
            "serve_errors",
            "Requests to the served model that this node answered with an error, by kind",
            Counter,
            errors,
        )?;
        family(
            enc,
            "serve_queue",
            "Requests waiting in this node's queue for the model",
            Gauge,
            per(&|c| c.queue as u64),
        )?;
        family(enc, "serve_batches", "Batches this node sent to workers", Counter, per(&|c| c.batches))?;
        family(enc, "serve_batch_rows", "Rows in the batches this node sent", Counter, per(&|c| c.batched_rows))?;
        let help = "Time from a request's arrival at this node to its answer; le bounds exact to ~1.6%";
        histograms(enc, "serve_request_duration_seconds", help, counts.iter().map(|(n, c)| (label(n), &c.latency)))
    }
}

/// Cluster-wide series, from this node's copy of the replicated state.
struct Cluster {
    coordinator: Arc<Coordinator>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

impl Collector for Cluster {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let data = self.coordinator.local_state();
        let st = &data.state;
        jobs(&mut enc, st)?;
        trainings(&mut enc, st)?;
        files(&mut enc, st)?;
        let ready =
            st.serving.models.iter().map(|(n, s)| (ModelLabel { model: n.clone() }, Value::Int(s.ready.len() as u64)));
        family(&mut enc, "serve_ready_workers", "Workers that have the served model loaded", MetricType::Gauge, ready)?;
        let recorded = st.events.next_seq.saturating_sub(1);
        single(&mut enc, "events", "Events on the cluster's timeline so far", MetricType::Counter, Value::Int(recorded))
    }
}

fn jobs(enc: &mut DescriptorEncoder, st: &ClusterState) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let now = idunno_net::now_ms();
    let jobs: Vec<_> = st.inference.jobs.iter().collect();
    let label = |n: &String| JobLabel { job: n.clone() };
    let per = |f: &dyn Fn(&idunno_state::Job) -> Value| jobs.iter().map(|(n, j)| (label(n), f(j))).collect::<Vec<_>>();
    family(
        enc,
        "job_queries",
        "Queries of the job counted (each once)",
        Counter,
        per(&|j| Value::Int(j.progress.queries_done)),
    )?;
    family(
        enc,
        "job_inputs",
        "Inputs of the job counted (each once)",
        Counter,
        per(&|j| Value::Int(j.progress.inputs_done)),
    )?;
    family(
        enc,
        "job_labeled_inputs",
        "Counted inputs that had a label",
        Counter,
        per(&|j| Value::Int(j.progress.labeled)),
    )?;
    family(
        enc,
        "job_correct",
        "Labeled inputs the model predicted right",
        Counter,
        per(&|j| Value::Int(j.progress.correct)),
    )?;
    family(
        enc,
        "job_loss_inputs",
        "Labeled inputs with a cross-entropy loss (a classifier's output rows)",
        Counter,
        per(&|j| Value::Int(j.progress.loss_count)),
    )?;
    family(
        enc,
        "job_loss",
        "Sum of the cross-entropy losses of the job_loss_inputs (the mean loss is their ratio)",
        Counter,
        per(&|j| Value::Float(j.progress.loss_micro as f64 / 1e6)),
    )?;
    family(
        enc,
        "job_query_duration_variance_seconds_squared",
        "Variance of the processing time of the job's counted queries (C2), exact",
        Gauge,
        per(&|j| Value::Float(j.progress.latency.summary().var / 1e6)),
    )?;
    family(
        enc,
        "job_query_rate",
        "Queries per second over the last 10 s (C1)",
        Gauge,
        per(&|j| Value::Float(if j.state == JobState::Running { j.progress.query_rate(now) } else { 0.0 })),
    )?;
    family(enc, "job_batch_size", "Inputs per query", Gauge, per(&|j| Value::Int(u64::from(j.spec.batch_size))))?;
    let workers = |n: &String| st.inference.assignments.get(n).map_or(0, |w| w.len() as u64);
    family(
        enc,
        "job_workers",
        "Workers assigned to the job",
        Gauge,
        jobs.iter().map(|(n, _)| (label(n), Value::Int(workers(n)))),
    )?;
    let predicted = |n: &String| st.inference.assignment_notes.get(n).and_then(|a| a.predicted_mqps);
    family(
        enc,
        "job_predicted_query_rate",
        "The query rate the fair split predicted when it assigned the workers",
        Gauge,
        jobs.iter().filter_map(|(n, _)| predicted(n).map(|p| (label(n), Value::Float(p as f64 / 1000.0)))),
    )?;
    let states = [JobState::Added, JobState::Running, JobState::Stopped, JobState::Done, JobState::Failed];
    let rows = jobs.iter().flat_map(|(n, j)| {
        states.iter().map(move |s| {
            let labels = JobStateLabels { job: n.to_string(), state: idunno_jobs::status::state_name(*s) };
            (labels, Value::Int(u64::from(j.state == *s)))
        })
    });
    family(enc, "job_state", "1 for the job's current state, 0 for the others", Gauge, rows)?;

    // The latency histogram the state keeps (every counted query once).
    let help = "Processing time of the job's counted queries, on their workers (C2); le bounds exact to ~1.6%";
    histograms(enc, "job_query_duration_seconds", help, jobs.iter().map(|(n, j)| (label(n), &j.progress.latency)))
}

/// A histogram family from the state's latency histograms (µs), with
/// [`latency_bounds`].
fn histograms<'h, L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, &'h idunno_state::Histogram)>,
) -> std::fmt::Result {
    let bounds = latency_bounds();
    let bounds_us: Vec<u64> = bounds.iter().map(|s| (s * 1e6).round() as u64).collect();
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let counts = h.cumulative(&bounds_us);
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(bounds.len() + 1);
        // Prometheus wants per-bucket counts here; the encoder adds them up.
        let mut last = 0;
        for (b, c) in bounds.iter().zip(&counts) {
            buckets.push((*b, c - last));
            last = *c;
        }
        buckets.push((f64::INFINITY, h.count - last));
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count, &buckets, None)?;
    }
    Ok(())
}

fn trainings(enc: &mut DescriptorEncoder, st: &ClusterState) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let ts: Vec<_> = st.training.jobs.iter().collect();
    let label = |n: &String| JobLabel { job: n.clone() };
    let rows = |f: &dyn Fn(&idunno_state::Training) -> Option<Value>| {
        ts.iter().filter_map(|(n, t)| f(t).map(|v| (label(n), v))).collect::<Vec<_>>()
    };
    family(enc, "train_step", "Steps the training has done", Counter, rows(&|t| Some(Value::Int(t.progress.step))))?;
    family(
        enc,
        "train_total_steps",
        "Steps the training will take",
        Gauge,
        rows(&|t| Some(Value::Int(t.spec.total_steps()))),
    )?;
    family(
        enc,
        "train_epoch",
        "Epochs the training has finished",
        Gauge,
        rows(&|t| Some(Value::Int(t.progress.epochs.len() as u64))),
    )?;
    family(
        enc,
        "train_loss",
        "Mean training loss of the epoch under way (or the last one)",
        Gauge,
        rows(&|t| t.current_score().loss().map(Value::Float)),
    )?;
    family(
        enc,
        "train_accuracy",
        "Training accuracy of the epoch under way (or the last one)",
        Gauge,
        rows(&|t| t.current_score().accuracy().map(Value::Float)),
    )?;
    family(
        enc,
        "train_test_accuracy",
        "Held-out accuracy at the last epoch's end",
        Gauge,
        rows(&|t| t.progress.epochs.last().and_then(|e| e.test.as_ref()).and_then(|s| s.accuracy()).map(Value::Float)),
    )?;
    family(
        enc,
        "train_generation",
        "The training group's generation (re-formed after a failure)",
        Gauge,
        rows(&|t| Some(Value::Int(t.group.generation))),
    )?;
    family(
        enc,
        "train_group_size",
        "Members of the training group",
        Gauge,
        rows(&|t| Some(Value::Int(t.group.workers.len() as u64))),
    )
}

fn files(enc: &mut DescriptorEncoder, st: &ClusterState) -> std::fmt::Result {
    use MetricType::Gauge;
    let files = &st.namespace.files;
    let live = files.values().filter(|e| !e.versions.is_empty());
    let (mut n, mut versions, mut bytes, mut stored) = (0u64, 0u64, 0u64, 0u64);
    for e in live {
        n += 1;
        for v in &e.versions {
            versions += 1;
            bytes += v.size;
            stored += v.size * v.replicas.len() as u64;
        }
    }
    single(enc, "sdfs_files", "Files in SDFS", Gauge, Value::Int(n))?;
    single(enc, "sdfs_versions", "File versions kept", Gauge, Value::Int(versions))?;
    single(enc, "sdfs_logical_bytes", "Bytes of every kept version, once", Gauge, Value::Int(bytes))?;
    single(enc, "sdfs_stored_bytes", "Bytes of every kept version times its replicas", Gauge, Value::Int(stored))
}

/// Per-node series: this node's view of membership and the group.
struct NodeView {
    coordinator: Arc<Coordinator>,
    membership: MembershipHandle,
    refused: Arc<std::sync::atomic::AtomicU64>,
    /// SDFS's replication factor.
    replicas: usize,
}

impl std::fmt::Debug for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeView")
    }
}

impl Collector for NodeView {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let view = self.membership.view();
        let count = |s: MemberState| view.members.iter().filter(|m| m.state == s).count() as u64;
        let states = [
            ("alive", MemberState::Alive),
            ("suspect", MemberState::Suspect),
            ("dead", MemberState::Dead),
            ("left", MemberState::Left),
        ];
        let rows = states.iter().map(|(name, s)| (StateLabel { state: name }, Value::Int(count(*s))));
        family(&mut enc, "members", "Members by state, as this node sees them", Gauge, rows)?;
        let live: Vec<u64> = view.members.iter().filter(|m| m.state.is_up()).map(|m| m.identity.id.0).collect();
        let want = self.replicas.min(live.len()).max(1);
        let data = self.coordinator.local_state();
        let versions = data.state.namespace.files.values().flat_map(|e| e.versions.iter());
        let under = versions.filter(|v| v.replicas.iter().filter(|r| live.contains(r)).count() < want).count();
        single(
            &mut enc,
            "sdfs_under_replicated_versions",
            "File versions held by fewer live nodes than the replication factor (or than there are live nodes), as this node sees the members",
            Gauge,
            Value::Int(under as u64),
        )?;
        let s = view.stats;
        single(
            &mut enc,
            "swim_datagrams_received",
            "SWIM datagrams this node received",
            Counter,
            Value::Int(s.datagrams_in),
        )?;
        single(
            &mut enc,
            "swim_datagrams_sent",
            "SWIM datagrams this node sent (probes, acks, gossip)",
            Counter,
            Value::Int(self.membership.datagrams_sent()),
        )?;
        single(
            &mut enc,
            "swim_datagrams_refused",
            "SWIM datagrams refused (garbage, forged, stale, another cluster's)",
            Counter,
            Value::Int(s.datagrams_rejected),
        )?;
        let observed = self.coordinator.events().observed();
        let rows = idunno_coordinator::events::OBSERVED
            .iter()
            .zip(observed)
            .map(|((_, name), n)| (StateLabel { state: name }, Value::Int(n)));
        family(
            &mut enc,
            "member_changes",
            "Membership changes this node observed (suspicions, deaths…)",
            Counter,
            rows,
        )?;
        single(
            &mut enc,
            "refused_connections",
            "Connections and calls refused (TLS, role, token)",
            Counter,
            Value::Int(self.refused.load(std::sync::atomic::Ordering::Relaxed)),
        )?;
        single(
            &mut enc,
            "events_dropped",
            "Events this node could not put on the timeline",
            Counter,
            Value::Int(self.coordinator.events().dropped()),
        )?;

        let m = self.coordinator.raft().metrics().borrow().clone();
        let me = self.coordinator.id();
        single(
            &mut enc,
            "raft_term",
            "The Raft term (each election starts a new one)",
            Gauge,
            Value::Int(m.current_term),
        )?;
        single(
            &mut enc,
            "raft_is_leader",
            "1 if this node is the coordinator leader",
            Gauge,
            Value::Int(u64::from(m.current_leader == Some(me))),
        )?;
        let voter = m.membership_config.membership().voter_ids().any(|v| v == me);
        single(
            &mut enc,
            "raft_is_voter",
            "1 if this node is a voter of the coordinator group",
            Gauge,
            Value::Int(u64::from(voter)),
        )?;
        let leader = m.current_leader.unwrap_or(0);
        single(&mut enc, "raft_leader", "The id of the leader this node follows (0: none)", Gauge, Value::Int(leader))?;
        single(
            &mut enc,
            "raft_last_log_index",
            "The last log index this node holds",
            Gauge,
            Value::Int(m.last_log_index.unwrap_or(0)),
        )?;
        let applied = m.last_applied.map_or(0, |l| l.index);
        single(&mut enc, "raft_applied_index", "The last log index this node applied", Gauge, Value::Int(applied))
    }
}

/// `process_*`: the standard names, without the prefix.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let p = read_process();
        single(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory of this node's process",
            Gauge,
            Value::Int(p.rss_bytes),
        )?;
        single(
            &mut enc,
            "process_cpu_seconds",
            "CPU time (user and system) of this node's process",
            Counter,
            Value::Float(p.cpu_seconds),
        )?;
        single(
            &mut enc,
            "process_open_fds",
            "Open file descriptors of this node's process",
            Gauge,
            Value::Int(p.open_fds),
        )?;
        single(&mut enc, "process_threads", "Threads of this node's process", Gauge, Value::Int(p.threads))?;
        single(
            &mut enc,
            "process_start_time_seconds",
            "When this node's process started (Unix time)",
            Gauge,
            Value::Float(p.start_seconds),
        )
    }
}

#[derive(Default)]
struct ProcessStats {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
    threads: u64,
    start_seconds: f64,
}

/// From `/proc/self`; zeros where it cannot be read.
fn read_process() -> ProcessStats {
    let mut p = ProcessStats::default();
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        p.rss_bytes = statm.split_whitespace().nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * page;
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat, 11 and 12 here.
        p.cpu_seconds = (num(11) + num(12)) / ticks;
        p.threads = num(17) as u64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
        p.start_seconds = boot.unwrap_or(0.0) + num(19) / ticks;
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    p
}
