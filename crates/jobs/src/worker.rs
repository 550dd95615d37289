//! The worker: asks the coordinator leader for queries, runs them on
//! ONNX Runtime, reports the outputs with the next request.
//!
//! One async task talks to the leader; `slots` threads run queries (the
//! ONNX Runtime call blocks), each with its own loaded models. The task
//! keeps up to two queries per slot on hand so a slot never waits for a
//! round trip. Results that could not be delivered (the leader died) are
//! kept and delivered to the next leader, which counts them if nobody
//! else did the work meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use idunno_ml::Tensor;
use idunno_rpc::{JobsClient, Limited, v1};
use idunno_sdfs::Sdfs;
use idunno_state::JobState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::lru::ByteLru;
use crate::rows::RowReader;
use crate::slot::Slot;
use crate::slots::{SlotCursor, SlotQueue, SlotWork, job_flow};
use crate::{Jobs, RESULTS_BUDGET, RPC_TIMEOUT};

pub(crate) type Key = (String, u64);

/// What a worker keeps of SDFS files, shared by the slots of this node,
/// bounded by bytes (`[worker] cache_mb`; the least recently used go
/// first): the 1 MiB chunks of input sets and labels that queries read
/// (a query fetches only the chunks that hold its rows, and a few after
/// them), and model files. Only the async task fills it, so a slot
/// thread never waits on the network.
struct Fetched {
    /// Model files, by name and version.
    cache: ByteLru<Key, Arc<Vec<u8>>>,
    /// Chunks of input sets and labels, and where their rows are.
    rows: RowReader,
    /// A model file every slot has loaded is not kept: its bytes would
    /// only sit beside the sessions made from them.
    loaded: Arc<LoadedModels>,
    slots: usize,
}

/// Chunks read past the last one a query needs, in the same request:
/// the worker's next queries over the same rows usually need them.
const READ_AHEAD: u64 = 4;

/// How many of this node's slots hold each model loaded.
#[derive(Default)]
pub(crate) struct LoadedModels(std::sync::Mutex<HashMap<Key, usize>>);

impl LoadedModels {
    fn count(&self, key: &Key) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().unwrap_or(0)
    }

    pub(crate) fn add(&self, key: &Key) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default() += 1;
    }

    pub(crate) fn remove(&self, key: &Key) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(key);
            }
        }
    }
}

impl Fetched {
    fn new(budget: usize, loaded: Arc<LoadedModels>, slots: usize) -> Fetched {
        Fetched { cache: ByteLru::new(budget), rows: RowReader::new(budget), loaded, slots: slots.max(1) }
    }

    /// Tell `/metrics` how much the caches hold.
    fn measure(&self, m: &crate::metrics::WorkerMetrics) {
        let models: usize = self.cache.values().map(|(_, size)| size).sum();
        let set = |kind, n: usize| m.cache_bytes.get_or_create(&crate::metrics::CacheLabel { kind }).set(n as i64);
        set("inputs", self.rows.bytes());
        set("models", models);
    }

    /// The task's rows of model input `input` (`None`: of the labels):
    /// from `f` at the task's first input, or from the shards the task
    /// names, joined in order.
    async fn set_rows(
        &mut self,
        sdfs: &Arc<Sdfs>,
        task: &v1::QueryTask,
        f: &v1::FileVersionRef,
        input: Option<u32>,
    ) -> Result<Tensor, String> {
        let mine = |p: &&v1::InputPiece| match input {
            Some(i) => !p.labels && p.input == i,
            None => p.labels,
        };
        let pieces: Vec<&v1::InputPiece> = task.pieces.iter().filter(mine).collect();
        if task.len == 0 {
            // Only the model is wanted (loading it ahead of the queries).
            return Ok(Tensor { dtype: idunno_ml::DType::F32, shape: vec![0], data: Vec::new() });
        }
        if pieces.is_empty() {
            let (start, len) = (task.first_input as usize, task.len as usize);
            return self.rows.rows(sdfs, &f.name, f.version, start, len, READ_AHEAD).await;
        }
        let mut joined: Option<Tensor> = None;
        for p in pieces {
            let file = p.file.as_ref().ok_or("a piece of a query's rows without its file")?;
            let (start, len) = (p.first_row as usize, p.rows as usize);
            let t = self.rows.rows(sdfs, &file.name, file.version, start, len, READ_AHEAD).await?;
            match &mut joined {
                None => joined = Some(t),
                Some(j) if j.dtype == t.dtype && j.sample_shape() == t.sample_shape() => {
                    j.data.extend_from_slice(&t.data);
                    j.shape[0] += t.samples();
                }
                Some(j) => {
                    return Err(format!(
                        "shard {} has samples {:?} of {}, the shards before it {:?} of {}",
                        file.name,
                        t.sample_shape(),
                        t.dtype,
                        j.sample_shape(),
                        j.dtype
                    ));
                }
            }
        }
        let t = joined.ok_or("a query without rows")?;
        if t.samples() != task.len as usize {
            return Err(format!("the shards hold {} of the query's {} rows", t.samples(), task.len));
        }
        Ok(t)
    }

    async fn model(&mut self, sdfs: &Arc<Sdfs>, f: &v1::FileVersionRef) -> Result<Arc<Vec<u8>>, String> {
        let key = (f.name.clone(), f.version);
        if let Some(m) = self.cache.get(&key) {
            return Ok(m.clone());
        }
        let (_, bytes) =
            sdfs.get(&f.name, f.version).await.map_err(|e| format!("reading model {} v{}: {e}", f.name, f.version))?;
        let bytes = Arc::new(bytes);
        self.cache.insert(key, bytes.clone(), bytes.len());
        Ok(bytes)
    }

    fn forget_model(&mut self, key: &Key) {
        self.cache.remove(key);
    }

    /// Everything `task` needs, or the reason it cannot run.
    async fn prepare(&mut self, sdfs: &Arc<Sdfs>, task: v1::QueryTask) -> Result<Prepared, v1::QueryResult> {
        let fetched = async {
            let model_ref = task.model.clone().ok_or("query without a model")?;
            let key = (model_ref.name.clone(), model_ref.version);
            let model = if self.loaded.count(&key) >= self.slots {
                self.forget_model(&key);
                None
            } else {
                Some(self.model(sdfs, &model_ref).await?)
            };
            let mut inputs = Vec::with_capacity(task.inputs.len());
            for (i, f) in task.inputs.iter().enumerate() {
                inputs.push(Arc::new(self.set_rows(sdfs, &task, f, Some(i as u32)).await?));
            }
            let labels = match &task.labels {
                Some(f) => Some(Arc::new(self.set_rows(sdfs, &task, f, None).await?)),
                None => None,
            };
            Ok::<_, String>((model_ref, model, inputs, labels))
        }
        .await;
        match fetched {
            Ok((model_ref, model, inputs, labels)) => {
                Ok(Prepared { key: (model_ref.name, model_ref.version), model, inputs, labels, task, warm: false })
            }
            Err(error) => Err(v1::QueryResult {
                job: task.job,
                pass: task.pass,
                start: task.start,
                len: task.len,
                error,
                transient: true,
                ..Default::default()
            }),
        }
    }
}

/// A query with its model file and input rows at hand.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub(crate) task: v1::QueryTask,
    pub(crate) key: Key,
    /// The model file, unless every slot had the model loaded.
    pub(crate) model: Option<Arc<Vec<u8>>>,
    /// The query's rows of each input set, and of the labels.
    pub(crate) inputs: Vec<Arc<Tensor>>,
    pub(crate) labels: Option<Arc<Tensor>>,
    /// Only load the model: a job was added or started, and its first
    /// query should not wait for the load.
    pub(crate) warm: bool,
}

/// Queries run at a lower CPU priority than the rest of the node: when
/// the machine is saturated with queries, failure detection, Raft
/// heartbeats and the leader's query flow must still get the CPU, or a
/// busy node looks dead. (On Linux, nice applies per thread; with one
/// intra-op thread ONNX Runtime runs on this thread.)
fn lower_priority() {
    // SAFETY: plain system calls on this thread's id; a failure only
    // leaves the priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the worker thread's priority");
        }
    }
}

/// How many of `results`, from the front, fit in `budget` bytes (at least
/// one: a single result is bounded by [`RESULTS_BUDGET`] when it is made),
/// and whether any are left over.
fn within_budget(results: &[v1::QueryResult], budget: usize) -> (usize, bool) {
    let mut used = 0usize;
    for (i, r) in results.iter().enumerate() {
        used = used.saturating_add(prost::Message::encoded_len(r));
        if used > budget && i > 0 {
            return (i, true);
        }
    }
    (results.len(), false)
}

/// How long a worker that could not fetch a query's files takes no work.
const FETCH_BACKOFF: Duration = Duration::from_secs(1);

/// Where queries run: on `slots` threads of their own, or — on a
/// simulated host, where only the host's thread may touch the simulation
/// and time must not pass unseen — right in the worker's task.
enum Exec {
    Threads(Arc<SlotQueue>),
    Inline(Slot),
}

/// Closes the slot queue when the worker's task ends (the slot threads
/// then stop, and batches still waiting are answered as failed).
struct Running(Arc<Jobs>, Arc<SlotQueue>);

impl Drop for Running {
    fn drop(&mut self) {
        self.1.close();
        let mut current = self.0.slot_queue.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.1)) {
            *current = None;
        }
    }
}

pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let slots = jobs.config.slots;
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<v1::QueryResult>();
    let mut _running = None;
    let mut exec = if idunno_net::simulated() {
        Exec::Inline(Slot::new(&jobs))
    } else {
        let queue = Arc::new(SlotQueue::default());
        for i in 0..slots {
            let mine = queue.clone();
            let tx = res_tx.clone();
            let mut slot = Slot::new(&jobs);
            let spawned = std::thread::Builder::new().name(format!("worker-slot-{i}")).spawn(move || {
                lower_priority();
                let mut cursor = SlotCursor::default();
                while let Some(work) = mine.next(&mut cursor) {
                    slot.forget_unserved();
                    match work {
                        SlotWork::Query(task) => {
                            if tx.send(slot.run(&task)).is_err() {
                                return;
                            }
                        }
                        SlotWork::Warm(task) => slot.warm(&task),
                        SlotWork::WarmServed(key, bytes, loaded) => slot.warm_served(&key, &bytes, &loaded),
                        SlotWork::Infer(w) => slot.infer(w),
                        SlotWork::Nudge => {}
                        SlotWork::Idle => slot.release_memory(),
                    }
                }
            });
            if let Err(e) = spawned {
                queue.close();
                tracing::error!(error = %e, "cannot start a worker thread");
                return;
            }
        }
        *jobs.slot_queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(queue.clone());
        _running = Some(Running(jobs.clone(), queue.clone()));
        Exec::Threads(queue)
    };
    drop(res_tx);
    let mut fetched = Fetched::new(jobs.config.cache_bytes(), jobs.loaded_models.clone(), slots);

    let depth = 2 * slots;
    // Set when this node could not fetch a query's files: it hands the
    // queries back at once and takes no more for a while, so that other
    // workers run them meanwhile.
    let mut backoff: Option<tokio::time::Instant> = None;
    let mut outstanding = 0usize;
    let mut results: Vec<v1::QueryResult> = Vec::new();
    let mut client: Option<(String, JobsClient<Channel>)> = None;
    let mut warmed = Warmed::default();
    loop {
        warm(&jobs, &mut fetched, &mut warmed, &mut exec, slots).await;
        while let Ok(r) = res_rx.try_recv() {
            outstanding -= 1;
            results.push(r);
        }
        if backoff.is_some_and(|until| tokio::time::Instant::now() >= until) {
            backoff = None;
        }
        if let Some(until) = backoff
            && results.is_empty()
        {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
            }
            continue;
        }
        // Draining: deliver what runs, ask for nothing new (and look
        // again now and then, in case the drain is called off).
        let draining = jobs.coordinator.local_state().state.nodes.is_draining(jobs.id);
        let want = if backoff.is_some() || draining { 0 } else { depth.saturating_sub(outstanding) };
        jobs.held.store(outstanding + results.len(), std::sync::atomic::Ordering::Relaxed);
        if want == 0 && results.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = res_rx.recv() => if let Some(r) = r { outstanding -= 1; results.push(r) },
                _ = tokio::time::sleep(Duration::from_secs(1)), if draining => {}
            }
            continue;
        }
        let idle = outstanding == 0 && results.is_empty();
        // Results beyond what one message carries go in the next calls
        // (which ask for no new work until they are all delivered).
        let (sent, more) = within_budget(&results, RESULTS_BUDGET);
        let req = v1::WorkRequest {
            worker: jobs.id,
            results: results[..sent].to_vec(),
            want: if more { 0 } else { want as u32 },
            wait_ms: if idle { 1000 } else { 0 },
            slots: jobs.config.slots.min(u32::MAX as usize) as u32,
            serving: serving_here(&jobs),
        };
        let reply = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = call(&jobs, &mut client, req) => r,
        };
        match reply {
            Ok(reply) => {
                results.drain(..sent);
                let got = reply.queries.len();
                for q in reply.queries {
                    let prepared = fetched.prepare(&jobs.sdfs, q).await;
                    fetched.measure(&jobs.metrics);
                    let p = match prepared {
                        Ok(p) => p,
                        Err(failed) => {
                            tracing::warn!(job = %failed.job, error = %failed.error, "cannot fetch a query's files");
                            backoff = Some(tokio::time::Instant::now() + FETCH_BACKOFF);
                            results.push(failed);
                            continue;
                        }
                    };
                    match &mut exec {
                        Exec::Threads(queue) => {
                            outstanding += 1;
                            queue.push(&job_flow(&p.task.job), SlotWork::Query(p), 1, 1);
                        }
                        Exec::Inline(slot) => results.push(slot.run(&p)),
                    }
                }
                if got == 0 && outstanding > 0 {
                    // Nothing more for now: wait for a slot to finish.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = res_rx.recv() => if let Some(r) = r { outstanding -= 1; results.push(r) },
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no leader to work for");
                client = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Models loaded ahead of their first query, and when fetching one last
/// failed.
#[derive(Default)]
struct Warmed {
    done: HashSet<Key>,
    /// Served models' files fetched and handed to the slots to load.
    served: HashSet<Key>,
    /// A model whose files could not be fetched is tried again after
    /// [`WARM_RETRY`], not at every round of the loop (every query): one
    /// job with a missing file would otherwise cost every query a fetch.
    failed: HashMap<Key, tokio::time::Instant>,
}

const WARM_RETRY: Duration = Duration::from_secs(2);

/// Fetch the files of every added or running job whose model this node has
/// not loaded yet, and have each slot load the model: the first query of a
/// job that just started then waits for neither (it used to take over a
/// second for MiniLM). A failed fetch is tried again after [`WARM_RETRY`].
async fn warm(jobs: &Jobs, fetched: &mut Fetched, warmed: &mut Warmed, exec: &mut Exec, slots: usize) {
    let state = jobs.coordinator.local_state();
    for job in state.state.inference.jobs.values() {
        if !matches!(job.state, JobState::Added | JobState::Running) {
            continue;
        }
        let key = (job.spec.model.clone(), job.spec.model_version);
        if warmed.done.contains(&key) || warmed.failed.get(&key).is_some_and(|t| t.elapsed() < WARM_RETRY) {
            continue;
        }
        let probe = idunno_scheduler::Query { job: String::new(), pass: 0, start: 0, len: 0 };
        let prepared = fetched.prepare(&jobs.sdfs, crate::leader::task(job, &probe)).await;
        fetched.measure(&jobs.metrics);
        let Ok(mut p) = prepared else {
            warmed.failed.insert(key, tokio::time::Instant::now());
            continue;
        };
        warmed.failed.remove(&key);
        p.warm = true;
        match exec {
            Exec::Inline(slot) => slot.warm(&p),
            Exec::Threads(queue) => {
                let flow = format!("warm/{}", key.0);
                for _ in 0..slots {
                    queue.push(&flow, SlotWork::Warm(p.clone()), 1, 1);
                }
            }
        }
        warmed.done.insert(key);
    }
    warm_served(jobs, fetched, warmed, exec, slots).await;
}

/// Fetch the file of every served model the leader placed here and have
/// every slot load it; the model counts as ready here once one slot has.
/// A model no longer placed here is forgotten (and the slots unload it).
async fn warm_served(jobs: &Jobs, fetched: &mut Fetched, warmed: &mut Warmed, exec: &mut Exec, slots: usize) {
    let Exec::Threads(queue) = exec else { return };
    let state = jobs.coordinator.local_state();
    let keys: HashSet<Key> = state
        .state
        .serving
        .models
        .values()
        .filter(|s| s.placed.contains(&jobs.id))
        .map(|s| (s.spec.model.clone(), s.spec.model_version))
        .collect();
    if jobs.served.retain(|k| keys.contains(k)) {
        queue.nudge();
    }
    for gone in warmed.served.extract_if(|k| !keys.contains(k)) {
        fetched.forget_model(&gone);
    }
    for key in keys {
        if warmed.served.contains(&key) || warmed.failed.get(&key).is_some_and(|t| t.elapsed() < WARM_RETRY) {
            continue;
        }
        let file = v1::FileVersionRef { name: key.0.clone(), version: key.1 };
        let bytes = match fetched.model(&jobs.sdfs, &file).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot fetch a served model yet");
                warmed.failed.insert(key, tokio::time::Instant::now());
                continue;
            }
        };
        warmed.failed.remove(&key);
        let loaded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        jobs.served.files.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), bytes.clone());
        jobs.served.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), loaded.clone());
        let flow = format!("warm/{}", key.0);
        for _ in 0..slots {
            queue.push(&flow, SlotWork::WarmServed(key.clone(), bytes.clone(), loaded.clone()), 1, 1);
        }
        warmed.served.insert(key);
    }
}

/// The served models this node has loaded, at the version the state names.
fn serving_here(jobs: &Jobs) -> Vec<String> {
    let state = jobs.coordinator.local_state();
    state
        .state
        .serving
        .models
        .values()
        .filter(|s| jobs.served.is_loaded(&(s.spec.model.clone(), s.spec.model_version)))
        .map(|s| s.spec.name.clone())
        .collect()
}

/// One `Work` call to the current leader, reconnecting when it moved.
async fn call(
    jobs: &Jobs,
    client: &mut Option<(String, JobsClient<Channel>)>,
    req: v1::WorkRequest,
) -> Result<v1::WorkReply, String> {
    let (_, addr) = jobs.coordinator.leader_rpc_addr().ok_or("no leader known")?;
    if client.as_ref().is_none_or(|(a, _)| *a != addr) {
        let ch = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(1), RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let c = JobsClient::new(ch).limited();
        *client = Some((addr.clone(), c));
    }
    let Some((_, c)) = client.as_mut() else { return Err("no client".into()) };
    c.work(req).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(bytes: usize) -> v1::QueryResult {
        v1::QueryResult { job: "j".into(), outputs: vec![1u8; bytes].into(), ..Default::default() }
    }

    #[test]
    fn results_are_sent_in_calls_that_fit_a_message() {
        let rs = vec![result(400), result(400), result(400)];
        assert_eq!(within_budget(&rs, 10_000), (3, false));
        assert_eq!(within_budget(&rs, 900), (2, true));
        assert_eq!(within_budget(&rs[2..], 900), (1, false));
        // A result over the budget on its own still goes (alone): results
        // are bounded when they are made.
        assert_eq!(within_budget(&[result(2000), result(1)], 900), (1, true));
        assert_eq!(within_budget(&[], 900), (0, false));
    }
}
