//! A whole-cluster simulation: five real nodes (`idunno_node::Node`, with
//! its SWIM, Raft, SDFS and jobs layers, redb files on a real disk) on
//! turmoil's simulated network and clock, running two inference jobs on a
//! real ONNX model and a data-parallel training job (two workers, candle)
//! while a seeded schedule crashes and restarts nodes
//! (the coordinator leader among them), partitions them and slows their
//! links. After every simulation step the invariants are checked:
//!
//! - never two leaders in one Raft term;
//! - every node that applied log index `i` has the same cluster state at
//!   `i` (state-machine safety), and a later state never drops work that an
//!   earlier one counted (no counted query lost);
//! - a job's counted work is sorted, disjoint ranges whose size is its
//!   input count (no query counted twice);
//! - the leader's lease table leases each query to at most one worker,
//!   never one already done;
//! - a training's generation and its checkpoint's step never go back.
//!
//! Meanwhile the client writes small files through one node and, each
//! time a write is acknowledged, reads the file's versions through
//! another: a read that answers must never be older than a write
//! acknowledged before it began (reads are linearizable wherever they
//! arrive).
//!
//! Then the faults stop, every node comes back, and the run must finish
//! both jobs (every input exactly once in the results, with the right
//! outputs) and the training (its model in SDFS, scoring when served what
//! training reported), and restore every file to its full replica count.
//!
//! **Determinism.** The fault schedule and the network (latencies, order
//! of delivery) come from the seed, and a failure prints it. What is not
//! under the seed: openraft's election timeouts (its own thread RNG) and
//! the completion order of file I/O on tokio's blocking threads, so a
//! replay follows the same faults but not always the same interleaving.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use idunno_coordinator::store::SmData;
use idunno_jobs::Jobs;
use idunno_node::{Node, NodeConfig, NodeOptions};
use idunno_rpc::{JobsClient, Limited, v1};
use openraft::{BasicNode, RaftMetrics};
use tokio::sync::watch;

mod checker;
mod faults;
mod training;

use checker::Checker;
use faults::Faults;

/// RPC (TCP) and SWIM (UDP) port of every simulated node.
const PORT: u16 = 7000;
/// Copies of every SDFS file.
const REPLICAS: usize = 4;
/// Rows of the generated input set, 16 values each.
const SAMPLES: usize = 96;

/// What one run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    /// How long faults are injected, from the moment the jobs start.
    pub fault_time: Duration,
    /// Passes of each job over its inputs.
    pub passes: u64,
    /// The whole run must end within this much simulated time.
    pub limit: Duration,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig { seed, nodes: 5, fault_time: Duration::from_secs(30), passes: 1500, limit: Duration::from_secs(200) }
    }
}

/// What a successful run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub steps: u64,
    pub sim_time: Duration,
    /// The faults, in order, with their simulated times.
    pub faults: Vec<String>,
    /// Terms in which a leader was seen.
    pub terms: usize,
    /// Distinct leaders seen.
    pub leaders: usize,
    /// Queries counted per job.
    pub queries: BTreeMap<String, u64>,
    /// When the jobs started and when the last of them was done.
    pub jobs_started: Duration,
    pub jobs_done: Duration,
}

/// A run that broke an invariant or did not finish.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
    pub faults: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed at {:.3} s of simulated time: {}", self.seed, self.at.as_secs_f64(), self.what)?;
        writeln!(f, "faults so far:")?;
        for line in &self.faults {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: IDUNNO_SIM_SEED={} cargo test --release -p idunno-sim", self.seed)
    }
}

/// What the invariant checks read of one running node. Nothing here keeps
/// the node's storage open: a crashed node's files must be free for its
/// restart.
struct HostView {
    metrics: watch::Receiver<RaftMetrics<u64, BasicNode>>,
    state: watch::Receiver<Arc<SmData>>,
    jobs: Weak<Jobs>,
}

type Registry = Rc<RefCell<BTreeMap<u64, HostView>>>;

/// Between the test's loop and the simulated client.
#[derive(Default)]
struct Shared {
    /// The jobs were started (faults may begin).
    started: Cell<bool>,
    /// Faults are over and every node is back.
    healed: Cell<bool>,
    /// The client's final verdict on the results, once it has one.
    verdict: RefCell<Option<Result<BTreeMap<String, u64>, String>>>,
}

fn host_name(id: u64) -> String {
    format!("n{id}")
}

fn node_addr(id: u64) -> String {
    format!("{}:{PORT}", turmoil::lookup(host_name(id)))
}

/// A version-1 `.npy` file of little-endian `data` (`descr` e.g. `<f4`,
/// `shape` as numpy writes it, e.g. `(96, 16)`).
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// The input set: row `i` holds `(7i + 3j) mod 16` at column `j`, so the
/// model (`y = x + 1`) puts its largest value, the predicted class, at the
/// one column where that is 15.
fn input_set() -> Vec<u8> {
    let data: Vec<u8> = (0..SAMPLES)
        .flat_map(|i| (0..16).map(move |j| ((7 * i + 3 * j) % 16) as f32))
        .flat_map(f32::to_le_bytes)
        .collect();
    npy("<f4", &format!("({SAMPLES}, 16)"), &data)
}

fn expected_class(i: usize) -> i64 {
    (0..16).find(|j| (7 * i + 3 * j) % 16 == 15).map(|j| j as i64).unwrap_or(-1)
}

/// The two jobs: the same model at different batch sizes, so the
/// dispatcher interleaves queries of different lengths.
const JOBS: [(&str, u32); 2] = [("small", 4), ("large", 8)];

/// The nodes' data folders. A crash here is a process's, never the
/// machine's, so what a node wrote survives it in memory as on disk: the
/// folders go to tmpfs where there is one, and an fsync no longer waits
/// for a disk that the rest of a test run keeps busy.
fn data_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    match tempfile::Builder::new().prefix("idunno-sim-").tempdir_in(shm) {
        Ok(dir) => Ok(dir),
        Err(_) => tempfile::tempdir(),
    }
}

/// Run one seeded simulation with the model at `model` (tiny-add.onnx).
pub fn run(config: &SimConfig, model: &Path) -> Result<Outcome, Failure> {
    let data = data_dir().map_err(|e| fail(config.seed, Duration::ZERO, e.to_string(), &[]))?;
    let model_bytes = std::fs::read(model)
        .map_err(|e| fail(config.seed, Duration::ZERO, format!("{}: {e}", model.display()), &[]))?;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(config.limit + Duration::from_secs(30))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(8))
        .tcp_capacity(4096)
        .rng_seed(config.seed)
        .build();

    let registry: Registry = Rc::default();
    let shared = Rc::new(Shared::default());
    for id in 1..=config.nodes {
        sim.host(host_name(id), software(id, config.nodes, data.path().join(host_name(id)), registry.clone()));
    }
    sim.client("ctl", client(config.clone(), model_bytes, shared.clone()));

    let mut faults = Faults::new(config);
    let mut checker = Checker::default();
    let mut steps = 0u64;
    let mut healed_at = None;
    let mut jobs_done = None;
    loop {
        let finished = match sim.step() {
            Ok(f) => f,
            Err(e) => return Err(fail(config.seed, sim.elapsed(), format!("simulation error: {e}"), &faults.log)),
        };
        steps += 1;
        let now = sim.elapsed();
        if let Err(what) = checker.check(&registry) {
            return Err(fail(config.seed, now, what, &faults.log));
        }
        if checker.all_done && jobs_done.is_none() {
            jobs_done = Some(now);
        }
        if finished {
            break;
        }
        if shared.started.get() && healed_at.is_none() {
            faults.started_at.get_or_insert(now);
            if faults.step(&mut sim, &registry, now) {
                healed_at = Some(now);
                shared.healed.set(true);
            }
        }
        if now > config.limit {
            let what = format!("the jobs did not finish within the time limit; {}", checker.summary(&registry));
            return Err(fail(config.seed, now, what, &faults.log));
        }
    }
    let queries = match shared.verdict.take() {
        Some(Ok(q)) => q,
        Some(Err(what)) => return Err(fail(config.seed, sim.elapsed(), what, &faults.log)),
        None => return Err(fail(config.seed, sim.elapsed(), "the client ended without a verdict".into(), &faults.log)),
    };

    // Every file gets back its full replica count once all nodes are up.
    let give_up = sim.elapsed() + Duration::from_secs(20);
    loop {
        let short = checker.under_replicated(&registry);
        if short.is_empty() {
            break;
        }
        if sim.elapsed() > give_up {
            let what = format!("files still short of {REPLICAS} replicas 20 s after the jobs ended: {short:?}");
            return Err(fail(config.seed, sim.elapsed(), what, &faults.log));
        }
        if let Err(e) = sim.step() {
            return Err(fail(config.seed, sim.elapsed(), format!("simulation error: {e}"), &faults.log));
        }
        steps += 1;
        if let Err(what) = checker.check(&registry) {
            return Err(fail(config.seed, sim.elapsed(), what, &faults.log));
        }
    }
    Ok(Outcome {
        steps,
        sim_time: sim.elapsed(),
        faults: faults.log,
        terms: checker.leaders.len(),
        leaders: checker.leaders.values().collect::<BTreeSet<_>>().len(),
        queries,
        jobs_started: faults.started_at.unwrap_or_default(),
        jobs_done: jobs_done.unwrap_or_default(),
    })
}

fn fail(seed: u64, at: Duration, what: String, faults: &[String]) -> Failure {
    Failure { seed, at, what, faults: faults.to_vec() }
}

/// A node's software: start the real node and serve until crashed. A
/// start that fails (no peer answered the join yet) is retried, as a
/// supervisor would; every start after the very first joins through a
/// peer, a different one on each attempt.
fn software(
    id: u64,
    nodes: u64,
    dir: PathBuf,
    registry: Registry,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = turmoil::Result>>> {
    let boots = Rc::new(Cell::new(0u64));
    move || {
        let (dir, registry, boots) = (dir.clone(), registry.clone(), boots.clone());
        Box::pin(async move {
            let boot = boots.get();
            boots.set(boot + 1);
            let ip: IpAddr = turmoil::lookup(host_name(id));
            for attempt in 0u64.. {
                let join = (id != 1 || boot > 0).then(|| {
                    let others: Vec<u64> = (1..=nodes).filter(|&p| p != id).collect();
                    node_addr(others[((boot + attempt) % others.len() as u64) as usize])
                });
                let options = NodeOptions {
                    cluster: Some("sim".into()),
                    id: Some(id),
                    addr: Some(format!("{ip}:{PORT}")),
                    http: Some(format!("{ip}:{}", PORT + 1000)),
                    data_dir: Some(dir.clone()),
                    join: join.map(idunno_node::config::Seeds::One),
                    join_timeout_ms: Some(3000),
                    voters: Some(3),
                    replicas: Some(REPLICAS),
                    worker: Some(idunno_jobs::WorkerConfig { lease_ms: 5000, ..Default::default() }),
                    ..Default::default()
                };
                let config = NodeConfig::resolve(options).map_err(|e| e.to_string())?;
                match Node::start(config).await {
                    Ok(node) => {
                        let view = HostView {
                            metrics: node.coordinator.raft().metrics(),
                            state: node.coordinator.watch_state(),
                            jobs: Arc::downgrade(&node.jobs),
                        };
                        registry.borrow_mut().insert(id, view);
                        // Serve until the simulation crashes this host.
                        std::future::pending::<()>().await;
                        drop(node);
                    }
                    Err(e) => {
                        tracing::warn!(node = id, attempt, error = %e, "start failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(())
        })
    }
}

/// The user: puts the model and inputs, adds and starts the jobs, waits
/// for them to finish after the faults, and checks their results. Every
/// call goes to any node that answers, as the CLI does.
async fn client(config: SimConfig, model: Vec<u8>, shared: Rc<Shared>) -> turmoil::Result {
    let nodes: Vec<u64> = (1..=config.nodes).collect();
    retry(&nodes, "put the model", |a| {
        let model = model.clone();
        async move { idunno_sdfs::client::put(&a, "tiny-add.onnx", &model).await }
    })
    .await?;
    let inputs = input_set();
    retry(&nodes, "put the inputs", |a| {
        let inputs = inputs.clone();
        async move { idunno_sdfs::client::put(&a, "rows.npy", &inputs).await }
    })
    .await?;
    for (job, batch) in JOBS {
        let req = v1::AddJobRequest {
            name: job.into(),
            model: "tiny-add.onnx".into(),
            inputs: vec!["rows.npy".into()],
            batch_size: batch,
            passes: config.passes,
            output: "class".into(),
            ..Default::default()
        };
        retry(&nodes, "add a job", |a| {
            let req = req.clone();
            async move { added(jobs_client(&a).await?.add_job(req).await) }
        })
        .await?;
        let start = v1::ControlRequest { job: job.into(), action: "start".into(), batch_size: 0 };
        retry(&nodes, "start a job", |a| {
            let start = start.clone();
            async move { jobs_client(&a).await?.control(start).await.map_err(|s| s.message().to_string()) }
        })
        .await?;
    }
    training::submit(&nodes).await?;
    shared.started.set(true);

    // While the faults run: writes acknowledged through one node must be
    // seen by a read through another that begins after the ack.
    let mut reads = 0u64;
    let mut k = 0usize;
    while !shared.healed.get() {
        k += 1;
        let (a, b) = (node_addr(nodes[k % nodes.len()]), node_addr(nodes[(k + 1) % nodes.len()]));
        let name = format!("probe/{k}");
        if let Ok(version) = idunno_sdfs::client::put(&a, &name, b"probe").await {
            match read_versions(&b, &name).await {
                Ok(seen) if seen < version => {
                    let what = format!(
                        "a read through {b} saw {name} at version {seen} after version {version} was acknowledged through {a}"
                    );
                    *shared.verdict.borrow_mut() = Some(Err(what));
                    return Ok(());
                }
                Ok(_) => reads += 1,
                // A node that cannot answer (down, cut off, behind) says so:
                // that is allowed; a stale answer is not.
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait for both jobs to be done.
    loop {
        let status = retry(&nodes, "job status", |a| async move {
            let r =
                jobs_client(&a).await?.status(v1::JobQuery::default()).await.map_err(|s| s.message().to_string())?;
            serde_json::from_slice::<serde_json::Value>(&r.into_inner().json).map_err(|e| e.to_string())
        })
        .await?;
        let states: Vec<&str> = status.as_array().into_iter().flatten().filter_map(|j| j["state"].as_str()).collect();
        if states.len() == JOBS.len() + 1 && states.iter().all(|s| *s == "done") {
            break;
        }
        if states.contains(&"failed") {
            *shared.verdict.borrow_mut() = Some(Err(format!("a job failed: {status}")));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut counted = BTreeMap::new();
    for (job, batch) in JOBS {
        let verdict = check_results(&nodes, job, batch, config.passes).await;
        match verdict {
            Ok(q) => {
                counted.insert(job.to_string(), q);
            }
            Err(e) => {
                *shared.verdict.borrow_mut() = Some(Err(e));
                return Ok(());
            }
        }
    }
    match training::check(&nodes).await {
        Ok((steps, groups)) => {
            counted.insert(format!("{} (steps)", training::JOB), steps);
            counted.insert(format!("{} (groups)", training::JOB), groups);
        }
        Err(e) => {
            *shared.verdict.borrow_mut() = Some(Err(e));
            return Ok(());
        }
    }
    if reads == 0 {
        *shared.verdict.borrow_mut() = Some(Err("no read after an acknowledged write answered".into()));
        return Ok(());
    }
    counted.insert("reads after acknowledged writes".into(), reads);
    *shared.verdict.borrow_mut() = Some(Ok(counted));
    Ok(())
}

/// The newest version of `name` as the node at `addr` answers a
/// (linearizable) read of it; 0 if it says there is none.
async fn read_versions(addr: &str, name: &str) -> Result<u64, String> {
    let ch = idunno_rpc::connect_channel(addr, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
    let req = v1::StatRequest { name: name.into(), local: false };
    match idunno_rpc::SdfsClient::new(ch).limited().stat(req).await {
        Ok(r) => Ok(r.into_inner().versions.first().map_or(0, |v| v.version)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(0),
        Err(s) => Err(s.message().to_string()),
    }
}

/// The job's status counts every query once, and its results hold every
/// input exactly once with the model's answer.
async fn check_results(nodes: &[u64], job: &str, batch: u32, passes: u64) -> Result<u64, String> {
    let query = v1::JobQuery { job: job.into(), explain: false };
    let status = retry(nodes, "job status", |a| {
        let query = query.clone();
        async move {
            let r = jobs_client(&a).await?.status(query).await.map_err(|s| s.message().to_string())?;
            serde_json::from_slice::<serde_json::Value>(&r.into_inner().json).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let queries_per_pass = SAMPLES.div_ceil(batch as usize) as u64;
    let done = status[0]["queries_done"].as_u64().unwrap_or(0);
    let inputs = status[0]["inputs_done"].as_u64().unwrap_or(0);
    if done != queries_per_pass * passes || inputs != SAMPLES as u64 * passes {
        return Err(format!(
            "job {job}: {done} queries and {inputs} inputs counted, expected {} and {}",
            queries_per_pass * passes,
            SAMPLES as u64 * passes
        ));
    }
    let rows = retry(nodes, "job results", |a| async move {
        idunno_jobs::results::fetch(&mut jobs_client(&a).await?, job).await.map_err(|s| s.message().to_string())
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut seen = BTreeMap::new();
    for row in &rows {
        let out = match row.output {
            idunno_jobs::results::Output::Class(c) => Some(c),
            _ => None,
        };
        if seen.insert(row.input, out).is_some() {
            return Err(format!("job {job}: input {} appears twice in the results", row.input));
        }
    }
    for i in 0..SAMPLES {
        match seen.get(&(i as u64)) {
            None => return Err(format!("job {job}: input {i} is missing from the results")),
            Some(out) if *out != Some(expected_class(i)) => {
                return Err(format!("job {job}: input {i} has output {out:?}, expected {}", expected_class(i)));
            }
            Some(_) => {}
        }
    }
    if seen.len() != SAMPLES {
        return Err(format!("job {job}: {} result rows for {SAMPLES} inputs", seen.len()));
    }
    Ok(done)
}

async fn jobs_client(addr: &str) -> Result<JobsClient<tonic::transport::Channel>, String> {
    let ch = idunno_rpc::connect_channel(addr, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
    Ok(JobsClient::new(ch).limited())
}

/// Try `f` on each node in turn until one succeeds; give up after a
/// minute of simulated time.
/// An add that went through, or that a retry after a lost reply finds
/// already done.
fn added<T>(reply: Result<T, tonic::Status>) -> Result<(), String> {
    match reply {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.message().to_string()),
    }
}

async fn retry<T, E: std::fmt::Display, F, Fut>(nodes: &[u64], what: &str, f: F) -> Result<T, String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    for attempt in 0..120usize {
        let addr = node_addr(nodes[attempt % nodes.len()]);
        match tokio::time::timeout(Duration::from_secs(10), f(addr.clone())).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("could not {what}: {last}"))
}
