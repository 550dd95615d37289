//! The worker: asks the coordinator leader for queries, runs them on
//! ONNX Runtime, reports the outputs with the next request.
//!
//! One async task talks to the leader; `slots` threads run queries (the
//! ONNX Runtime call blocks), each with its own loaded models. The task
//! keeps up to two queries per slot on hand so a slot never waits for a
//! round trip. Results that could not be delivered (the leader died) are
//! kept and delivered to the next leader, which counts them if nobody
//! else did the work meanwhile.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idunno_ml::onnx::{OnnxModel, fit};
use idunno_ml::{Tensor, read_array};
use idunno_rpc::{JobsClient, v1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Jobs, RPC_TIMEOUT};

type Key = (String, u64);

/// Input sets and labels, parsed, shared by the slots of this node.
#[derive(Default)]
struct DataCache {
    arrays: Mutex<HashMap<Key, Arc<Tensor>>>,
}

impl DataCache {
    fn get(&self, rt: &tokio::runtime::Handle, local: &str, f: &v1::FileVersionRef) -> Result<Arc<Tensor>, String> {
        let key = (f.name.clone(), f.version);
        if let Some(t) = self.arrays.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(t.clone());
        }
        let (_, bytes) = rt
            .block_on(idunno_sdfs::client::get(local, &f.name, f.version))
            .map_err(|e| format!("reading {} v{}: {e}", f.name, f.version))?;
        let t = Arc::new(read_array(&bytes).map_err(|e| format!("{}: {e}", f.name))?);
        let mut arrays = self.arrays.lock().unwrap_or_else(|e| e.into_inner());
        // Input sets of jobs long gone should not pile up.
        if arrays.len() >= 16 {
            arrays.clear();
        }
        arrays.insert(key, t.clone());
        Ok(t)
    }
}

/// One slot: a thread with its own loaded models.
struct Slot {
    rt: tokio::runtime::Handle,
    local: String,
    threads: usize,
    data: Arc<DataCache>,
    models: HashMap<Key, OnnxModel>,
}

impl Slot {
    fn model(&mut self, f: &v1::FileVersionRef) -> Result<&mut OnnxModel, String> {
        let key = (f.name.clone(), f.version);
        if !self.models.contains_key(&key) {
            let (_, bytes) = self
                .rt
                .block_on(idunno_sdfs::client::get(&self.local, &f.name, f.version))
                .map_err(|e| format!("reading model {} v{}: {e}", f.name, f.version))?;
            let m = OnnxModel::load(&bytes, self.threads).map_err(|e| format!("model {}: {e}", f.name))?;
            if self.models.len() >= 4 {
                self.models.clear();
            }
            tracing::info!(model = %f.name, version = f.version, "model loaded");
            self.models.insert(key.clone(), m);
        }
        self.models.get_mut(&key).ok_or_else(|| "model cache".to_string())
    }

    fn run(&mut self, t: &v1::QueryTask) -> v1::QueryResult {
        let mut result =
            v1::QueryResult { job: t.job.clone(), pass: t.pass, start: t.start, len: t.len, ..Default::default() };
        if let Err(e) = self.try_run(t, &mut result) {
            result.error = e;
        }
        result
    }

    fn try_run(&mut self, t: &v1::QueryTask, out: &mut v1::QueryResult) -> Result<(), String> {
        let model_ref = t.model.clone().ok_or("query without a model")?;
        let sets: Vec<Arc<Tensor>> =
            t.inputs.iter().map(|f| self.data.get(&self.rt, &self.local, f)).collect::<Result<_, _>>()?;
        let labels = match &t.labels {
            Some(f) => Some(self.data.get(&self.rt, &self.local, f)?),
            None => None,
        };
        let (start, len) = (t.first_input as usize, t.len as usize);
        let model = self.model(&model_ref)?;
        // Processing time: the batch from input rows to outputs (a model
        // loaded for the first query does not count).
        let started = Instant::now();
        let sigs = model.inputs().to_vec();
        let mut batch = Vec::with_capacity(sets.len());
        for (sig, set) in sigs.iter().zip(&sets) {
            if start + len > set.samples() {
                return Err(format!("inputs {start}..{} beyond the input set of {}", start + len, set.samples()));
            }
            batch.push(fit(sig, set.rows(start, len))?);
        }
        let outputs = model.run(&batch).map_err(|e| e.to_string())?;
        out.latency_us = started.elapsed().as_micros() as u64;
        let first = outputs.into_iter().next().ok_or("the model has no output")?;
        let per_row = if first.samples() == len { first.len() / len.max(1) } else { 0 };
        if per_row == 0 {
            return Err(format!("output shape {:?} does not have one row per input ({len})", first.shape));
        }
        let values = first.to_f32();
        let ints = (first.dtype != idunno_ml::DType::F32).then(|| first.to_i64());
        let labels = labels.map(|l| l.rows(start, len).to_i64());
        let mut rows = Vec::with_capacity(len);
        for k in 0..len {
            let row = &values[k * per_row..(k + 1) * per_row];
            let output = if t.output == "vector" {
                serde_json::json!(row)
            } else {
                let class = match &ints {
                    Some(i) if per_row == 1 => i[k],
                    _ => argmax(row) as i64,
                };
                if let Some(label) = labels.as_ref().and_then(|l| l.get(k)).filter(|l| **l >= 0) {
                    out.labeled += 1;
                    out.correct += u64::from(class == *label);
                }
                serde_json::json!(class)
            };
            rows.push(output);
        }
        out.outputs_json = serde_json::to_vec(&rows).map_err(|e| e.to_string())?;
        Ok(())
    }
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

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let slots = jobs.config.slots;
    let (task_tx, task_rx) = std_mpsc::channel::<v1::QueryTask>();
    let task_rx = Arc::new(Mutex::new(task_rx));
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<v1::QueryResult>();
    let data = Arc::new(DataCache::default());
    let rt = tokio::runtime::Handle::current();
    for i in 0..slots {
        let rx = task_rx.clone();
        let tx = res_tx.clone();
        let mut slot = Slot {
            rt: rt.clone(),
            local: jobs.local.clone(),
            threads: jobs.config.threads,
            data: data.clone(),
            models: HashMap::new(),
        };
        let spawned = std::thread::Builder::new().name(format!("worker-slot-{i}")).spawn(move || {
            lower_priority();
            loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(task) = next else { return };
                if tx.send(slot.run(&task)).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a worker thread");
            return;
        }
    }
    drop(res_tx);

    let depth = 2 * slots;
    let mut outstanding = 0usize;
    let mut results: Vec<v1::QueryResult> = Vec::new();
    let mut client: Option<(String, JobsClient<Channel>)> = None;
    loop {
        while let Ok(r) = res_rx.try_recv() {
            outstanding -= 1;
            results.push(r);
        }
        let want = depth.saturating_sub(outstanding);
        if want == 0 && results.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = res_rx.recv() => if let Some(r) = r { outstanding -= 1; results.push(r) },
            }
            continue;
        }
        let idle = outstanding == 0 && results.is_empty();
        let req = v1::WorkRequest {
            worker: jobs.id,
            results: results.clone(),
            want: want as u32,
            wait_ms: if idle { 1000 } else { 0 },
        };
        let reply = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = call(&jobs, &mut client, req) => r,
        };
        match reply {
            Ok(reply) => {
                results.clear();
                let got = reply.queries.len();
                for q in reply.queries {
                    outstanding += 1;
                    if task_tx.send(q).is_err() {
                        return;
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
        let c = JobsClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        *client = Some((addr.clone(), c));
    }
    let Some((_, c)) = client.as_mut() else { return Err("no client".into()) };
    c.work(req).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string())
}
