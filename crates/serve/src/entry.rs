//! The node a request arrives at: it checks the request against the
//! served model, queues it with that model's other requests here, and one
//! task per model sends dynamic batches to ready workers (`batch`),
//! splits their outputs back into answers, and sends a batch that failed
//! on a worker (it died, drained, or lost the model) to another one while
//! its requests' deadlines allow. Requests never touch the Raft log or the
//! leader; only the served models' specs and ready workers are read from
//! this node's copy of the replicated state.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use idunno_coordinator::Coordinator;
use idunno_membership::MembershipHandle;
use idunno_rpc::{JobsClient, Limited, v1};
use idunno_state::{Served, TensorSpec};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::batch::{self, Batcher, Limits, Queued, StackKey};
use crate::codec::{Datatype, InferRequest, InferResponse, Tensor};
use crate::stats::Stats;

/// Why a request got no answer from a model, as the protocols tell it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    QueueFull(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Deadline(String),
}

/// How long a request may take when its client set no deadline (a
/// server's bound on any unary call, `idunno_rpc::limits::UNARY_DEADLINE`).
pub const DEFAULT_DEADLINE: Duration = idunno_rpc::limits::UNARY_DEADLINE;
/// Batches of one model this node keeps in flight per worker.
const IN_FLIGHT_PER_WORKER: usize = 2;
/// How long a worker that failed a batch is passed over.
const AVOID: Duration = Duration::from_secs(2);
/// How often a model whose batches no worker can take looks again.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);
/// Requests waiting for a model's task to take them (beyond the model's
/// own queue limit, which the task enforces).
const HANDOFF: usize = 1024;

/// One request on its way: its inputs in the model's order, its rows, and
/// where its answer goes.
struct Request {
    inputs: Vec<Tensor>,
    rows: u64,
    key: StackKey,
    deadline: Instant,
    /// Workers that failed it already.
    tried: Vec<u64>,
    reply: oneshot::Sender<Result<Vec<Tensor>, ServeError>>,
    arrived: Instant,
}

/// This node's own worker, called in process when a batch goes to it:
/// the batch and how long it may take, as the `Infer` call would carry
/// them, without encoding the tensors or crossing a socket.
pub type LocalWorker = Arc<
    dyn Fn(v1::InferBatch, Duration) -> Pin<Box<dyn Future<Output = Result<v1::InferBatchReply, tonic::Status>> + Send>>
        + Send
        + Sync,
>;

/// This node's part in serving: a queue and a task per served model.
pub struct Serving {
    coordinator: Arc<Coordinator>,
    membership: MembershipHandle,
    models: Mutex<HashMap<String, mpsc::Sender<Request>>>,
    /// One connection per worker: its address and client.
    clients: Mutex<HashMap<u64, (String, JobsClient<Channel>)>>,
    /// This node's id and its worker, once the node has set them.
    local: OnceLock<(u64, LocalWorker)>,
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl Serving {
    pub fn new(
        coordinator: Arc<Coordinator>,
        membership: MembershipHandle,
        shutdown: CancellationToken,
    ) -> Arc<Serving> {
        Arc::new(Serving {
            coordinator,
            membership,
            models: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            local: OnceLock::new(),
            stats: Arc::new(Stats::default()),
            shutdown,
        })
    }

    /// Batches for node `id` (this one) go to `worker` in process.
    pub fn set_local(&self, id: u64, worker: LocalWorker) {
        let _ = self.local.set((id, worker));
    }

    /// The served model `name` as this node's state has it.
    pub fn model(&self, name: &str) -> Option<Served> {
        self.coordinator.local_state().state.serving.models.get(name).cloned()
    }

    /// Every served model, by name.
    pub fn models(&self) -> BTreeMap<String, Served> {
        self.coordinator.local_state().state.serving.models.clone()
    }

    /// Whether this node can take requests: it knows a leader (it is in
    /// the group) and its state is the group's.
    pub fn ready(&self) -> bool {
        self.coordinator.leader_rpc_addr().is_some()
    }

    /// Answer `req` with model `name` (at `version`, if the client named
    /// one), within `deadline`.
    pub async fn infer(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
        req: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, ServeError> {
        // (A name that is not served is not counted: a client's names
        // would grow the table without bound.)
        let served = self.model(name).ok_or_else(|| ServeError::NotFound(format!("no served model named {name}")))?;
        let arrived = Instant::now();
        let answer = self.infer_served(name, &served, version, req, deadline).await;
        self.stats.answered(name, arrived.elapsed(), answer.as_ref().err());
        answer
    }

    async fn infer_served(
        self: &Arc<Self>,
        name: &str,
        served: &Served,
        version: Option<&str>,
        req: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, ServeError> {
        let spec = &served.spec;
        if let Some(v) = version.filter(|v| !v.is_empty())
            && v != spec.model_version.to_string()
        {
            return Err(ServeError::NotFound(format!(
                "model {name} is served at version {}, not {v}",
                spec.model_version
            )));
        }
        let (inputs, rows, key) = check_inputs(&spec.inputs, req.inputs)?;
        for o in &req.outputs {
            if !spec.outputs.iter().any(|s| s.name == o.name) {
                let names: Vec<&str> = spec.outputs.iter().map(|s| s.name.as_str()).collect();
                return Err(ServeError::BadRequest(format!(
                    "model {name} has no output {} (its outputs: {})",
                    o.name,
                    names.join(", ")
                )));
            }
        }
        // The client's number: bounded before it meets the clock.
        let client_deadline = req.timeout_us.map(|us| Instant::now() + Duration::from_micros(us).min(DEFAULT_DEADLINE));
        let deadline =
            [deadline, client_deadline].into_iter().flatten().min().unwrap_or(Instant::now() + DEFAULT_DEADLINE);
        let arrived = Instant::now();
        let (reply, answer) = oneshot::channel();
        let request = Request { inputs, rows, key, deadline, tried: Vec::new(), reply, arrived };
        let tx = self.queue_of(name);
        tx.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::QueueFull(format!("model {name}'s queue is full")),
            mpsc::error::TrySendError::Closed(_) => ServeError::Unavailable("this node is stopping".into()),
        })?;
        let outputs = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ServeError::Unavailable("this node is stopping".into())),
            Err(_) => Err(ServeError::Deadline(format!("model {name} gave no answer within the request's deadline"))),
        }?;
        let outputs = if req.outputs.is_empty() {
            outputs
        } else {
            req.outputs.iter().filter_map(|o| outputs.iter().find(|t| t.name == o.name).cloned()).collect()
        };
        Ok(InferResponse {
            model_name: name.to_string(),
            model_version: spec.model_version.to_string(),
            id: req.id,
            outputs,
        })
    }

    /// The queue of model `name`, its task started if it has none.
    fn queue_of(self: &Arc<Self>, name: &str) -> mpsc::Sender<Request> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = models.get(name).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(HANDOFF);
        models.insert(name.to_string(), tx.clone());
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move { me.run_model(name, rx).await });
        tx
    }

    /// The task of one model: queue, batch, send, answer.
    async fn run_model(self: Arc<Self>, name: String, mut rx: mpsc::Receiver<Request>) {
        let limits = |s: &Served| Limits {
            max_batch: u64::from(s.spec.max_batch),
            max_delay_ms: u64::from(s.spec.max_delay_ms),
            max_queue: s.spec.max_queue as usize,
        };
        let Some(first) = self.model(&name) else { return };
        let mut queue: Batcher<Request> = Batcher::new(limits(&first));
        let epoch = Instant::now();
        let ms = move |t: Instant| t.saturating_duration_since(epoch).as_millis() as u64;
        let mut in_flight: BTreeMap<u64, usize> = BTreeMap::new();
        let mut avoid: HashMap<u64, Instant> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Vec<Queued<Request>>, Result<(), ServeError>)>();
        let mut idle_since = Instant::now();
        // Set when a batch was due but no worker could take it: then look
        // again on a worker's answer, a new request, a deadline, or soon
        // (the state may name new ready workers).
        let mut blocked = false;
        loop {
            let wake = if blocked {
                let soon = Instant::now() + BLOCKED_RECHECK;
                let deadline = queue.next_deadline().map(|at| epoch + Duration::from_millis(at));
                let avoid_ends = avoid.values().min().copied();
                [Some(soon), deadline, avoid_ends].into_iter().flatten().min()
            } else {
                queue.wake_at().map(|at| epoch + Duration::from_millis(at))
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = rx.recv() => match r {
                    Some(r) => {
                        let (rows, key, arrived, deadline) = (r.rows, r.key.clone(), ms(r.arrived), ms(r.deadline));
                        if let Err((full, r)) = queue.push(r, rows, key, arrived, deadline) {
                            let why = format!("model {name} has {} requests waiting at this node (its limit)", full.0);
                            let _ = r.reply.send(Err(ServeError::QueueFull(why)));
                        }
                    }
                    None => return,
                },
                Some((worker, batch, outcome)) = done_rx.recv() => {
                    if let Some(n) = in_flight.get_mut(&worker) {
                        *n = n.saturating_sub(1);
                    }
                    if let Err(e) = outcome {
                        tracing::debug!(model = %name, worker, error = %e, "a batch failed on a worker: sending it elsewhere");
                        avoid.insert(worker, Instant::now() + AVOID);
                        let mut batch = batch;
                        for q in &mut batch {
                            q.req.tried.push(worker);
                        }
                        queue.requeue(batch);
                    }
                }
                _ = sleep_until(wake) => {}
            }
            let Some(served) = self.model(&name) else {
                for q in queue.take_all() {
                    let _ = q.req.reply.send(Err(ServeError::NotFound(format!("model {name} is no longer served"))));
                }
                self.models.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                return;
            };
            queue.set_limits(limits(&served));
            let now = Instant::now();
            for r in queue.expired(ms(now)) {
                let why = format!("model {name} gave no answer within the request's deadline");
                let _ = r.reply.send(Err(ServeError::Deadline(why)));
            }
            avoid.retain(|_, until| *until > now);
            self.stats.queued(&name, queue.len());
            // Send what is due while workers can take it.
            blocked = false;
            while queue.due(ms(Instant::now())) {
                let ready: Vec<u64> = served.ready.iter().copied().filter(|w| !avoid.contains_key(w)).collect();
                let tried = queue.front().map(|q| q.req.tried.clone()).unwrap_or_default();
                let Some(worker) = batch::pick(&ready, &in_flight, |_| IN_FLIGHT_PER_WORKER, &tried) else {
                    // Every worker that may take it failed it: with none
                    // left to try, the requests' deadlines decide.
                    if !ready.is_empty()
                        && ready.iter().all(|w| tried.contains(w))
                        && let Some(q) = queue.front_mut()
                    {
                        q.req.tried.clear();
                    }
                    blocked = true;
                    break;
                };
                let batch = queue.take();
                *in_flight.entry(worker).or_default() += 1;
                let me = self.clone();
                let done = done_tx.clone();
                let spec = served.spec.clone();
                tokio::spawn(async move {
                    let (batch, outcome) = me.send(worker, &spec, batch).await;
                    let _ = done.send((worker, batch, outcome));
                });
            }
            if queue.is_empty() && in_flight.values().all(|n| *n == 0) {
                if idle_since.elapsed() > Duration::from_secs(300) {
                    // A model nobody asked for in a while: its task goes
                    // (the next request starts another).
                    self.models.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                    return;
                }
            } else {
                idle_since = Instant::now();
            }
        }
    }

    /// Run `batch` on `worker`: the requests answered, or the batch back
    /// with why it did not run there (to go elsewhere). Requests the
    /// model itself refused are answered with that.
    async fn send(
        &self,
        worker: u64,
        spec: &idunno_state::ServeSpec,
        batch: Vec<Queued<Request>>,
    ) -> (Vec<Queued<Request>>, Result<(), ServeError>) {
        let deadline = batch.iter().map(|q| q.req.deadline).max().unwrap_or_else(Instant::now);
        let stacked = stack(&batch);
        let rows: Vec<u64> = batch.iter().map(|q| q.rows).collect();
        let request = v1::InferBatch {
            model: spec.name.clone(),
            model_version: spec.model_version,
            inputs: stacked,
            requests: batch.len() as u32,
        };
        self.stats.batch(&spec.name, rows.iter().sum());
        let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let local = self.local.get().filter(|(id, _)| *id == worker).map(|(_, w)| w.clone());
        let ran = match local {
            Some(run) => run(request, timeout).await.map(tonic::Response::new),
            None => match self.client(worker).await {
                Ok(mut c) => {
                    let mut call = tonic::Request::new(request);
                    call.set_timeout(timeout);
                    c.infer(call).await
                }
                Err(e) => Err(tonic::Status::unavailable(e)),
            },
        };
        match ran {
            Ok(reply) => match split(reply.into_inner().outputs, &rows) {
                Ok(per_request) => {
                    for (q, outputs) in batch.into_iter().zip(per_request) {
                        let _ = q.req.reply.send(Ok(outputs));
                    }
                    (Vec::new(), Ok(()))
                }
                Err(why) => {
                    for q in batch {
                        let _ = q.req.reply.send(Err(ServeError::BadRequest(why.clone())));
                    }
                    (Vec::new(), Ok(()))
                }
            },
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                let why = format!("model {}: {}", spec.name, s.message());
                for q in batch {
                    let _ = q.req.reply.send(Err(ServeError::BadRequest(why.clone())));
                }
                (Vec::new(), Ok(()))
            }
            Err(s) => {
                // Connect afresh next time (it may have restarted).
                self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&worker);
                (batch, Err(ServeError::Unavailable(format!("node {worker}: {}", s.message()))))
            }
        }
    }

    /// A client for `worker`'s RPC port (kept: one connection per worker).
    async fn client(&self, worker: u64) -> Result<JobsClient<Channel>, String> {
        let addr = self
            .membership
            .view()
            .members
            .into_iter()
            .find(|m| m.identity.id.0 == worker)
            .map(|m| m.identity.addr.to_string())
            .ok_or_else(|| format!("node {worker} is not a member"))?;
        if let Some((a, c)) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&worker)
            && *a == addr
        {
            return Ok(c.clone());
        }
        let ch = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(1), DEFAULT_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        let c = JobsClient::new(ch).limited();
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(worker, (addr, c.clone()));
        Ok(c)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A request's inputs in the model's order, checked against the model:
/// each input given once, of the model's datatype, its shape the model's
/// where the model fixes a dimension. Also the rows (the first dimension,
/// when the model leaves it free) and what it stacks with.
fn check_inputs(specs: &[TensorSpec], given: Vec<Tensor>) -> Result<(Vec<Tensor>, u64, StackKey), ServeError> {
    let bad = |s: String| Err(ServeError::BadRequest(s));
    let mut given: Vec<Option<Tensor>> = given.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(specs.len());
    let mut rows = None;
    let mut key = StackKey::new();
    for spec in specs {
        let Some(t) = given.iter_mut().find(|t| t.as_ref().is_some_and(|t| t.name == spec.name)).and_then(Option::take)
        else {
            return bad(format!("input {} is missing", spec.name));
        };
        if t.datatype.name() != spec.datatype {
            return bad(format!("input {} is {}, the model takes {}", t.name, t.datatype.name(), spec.datatype));
        }
        let fits = t.shape.len() == spec.shape.len()
            && spec.shape.iter().zip(&t.shape).all(|(want, got)| *want < 0 || *want as u64 == *got);
        if !fits {
            return bad(format!(
                "input {} has shape {:?}, the model takes {:?} (-1: any)",
                t.name, t.shape, spec.shape
            ));
        }
        // Rows: the first dimension when the model leaves it free; a
        // model with a fixed first dimension takes requests one by one.
        let r = match (spec.shape.first(), t.shape.first()) {
            (Some(-1), Some(n)) => *n,
            _ => 1,
        };
        if rows.is_some_and(|x| x != r) {
            return bad(format!("input {} has {r} rows, other inputs {}", t.name, rows.unwrap_or(0)));
        }
        rows = Some(r);
        let rest = if spec.shape.first() == Some(&-1) { t.shape[1..].to_vec() } else { t.shape.clone() };
        key.push((dt_code(t.datatype), rest));
        ordered.push(t);
    }
    if let Some(extra) = given.into_iter().flatten().next() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return bad(format!("the model has no input {} (its inputs: {})", extra.name, names.join(", ")));
    }
    let rows = rows.unwrap_or(1);
    if rows == 0 {
        return bad("a request must have at least one row".into());
    }
    // A model with a fixed first dimension cannot stack requests.
    if specs.iter().any(|s| s.shape.first().is_some_and(|d| *d >= 0)) {
        key.push((255, vec![u64::MAX]));
    }
    Ok((ordered, rows, key))
}

fn dt_code(d: Datatype) -> u8 {
    d as u8
}

/// The batch's inputs, each request's rows one after another.
fn stack(batch: &[Queued<Request>]) -> Vec<v1::RawTensor> {
    let Some(first) = batch.first() else { return Vec::new() };
    (0..first.req.inputs.len())
        .map(|i| {
            let t0 = &first.req.inputs[i];
            let mut shape = t0.shape.clone();
            // One request's rows go as they are (shared, not copied).
            let data = if batch.len() == 1 {
                t0.data.clone()
            } else {
                let mut data = Vec::with_capacity(batch.iter().map(|q| q.req.inputs[i].data.len()).sum());
                for q in batch {
                    data.extend_from_slice(&q.req.inputs[i].data);
                }
                data.into()
            };
            if batch.len() > 1
                && let Some(d) = shape.first_mut()
            {
                *d = batch.iter().map(|q| q.rows).sum();
            }
            v1::RawTensor { name: t0.name.clone(), datatype: t0.datatype.name().to_string(), shape, data }
        })
        .collect()
}

/// A batch's outputs cut back into each request's: along the first
/// dimension, `rows[i]` rows for request `i`.
fn split(outputs: Vec<v1::RawTensor>, rows: &[u64]) -> Result<Vec<Vec<Tensor>>, String> {
    let total: u64 = rows.iter().sum();
    let mut per: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); rows.len()];
    for o in outputs {
        let datatype = Datatype::parse(&o.datatype).ok_or_else(|| format!("output {} is {}", o.name, o.datatype))?;
        if rows.len() == 1 {
            per[0].push(Tensor { name: o.name, datatype, shape: o.shape, data: o.data });
            continue;
        }
        if o.shape.first() != Some(&total) || total == 0 {
            return Err(format!(
                "output {} has shape {:?}: not one row per input row ({total}), so a batch cannot be split",
                o.name, o.shape
            ));
        }
        let row_bytes = o.data.len() / total as usize;
        let mut at = 0usize;
        for (i, r) in rows.iter().enumerate() {
            let n = *r as usize * row_bytes;
            let mut shape = o.shape.clone();
            shape[0] = *r;
            per[i].push(Tensor { name: o.name.clone(), datatype, shape, data: o.data.slice(at..at + n) });
            at += n;
        }
    }
    Ok(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dt: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: dt.into(), shape: shape.to_vec() }
    }

    fn t(name: &str, dt: Datatype, shape: &[u64]) -> Tensor {
        let n = Tensor::elements(shape).unwrap() as usize * dt.size();
        Tensor { name: name.into(), datatype: dt, shape: shape.to_vec(), data: vec![1; n].into() }
    }

    #[test]
    fn inputs_are_checked_against_the_model_and_put_in_its_order() {
        let specs = [spec("ids", "INT64", &[-1, -1]), spec("mask", "INT64", &[-1, -1])];
        let (ordered, rows, key) =
            check_inputs(&specs, vec![t("mask", Datatype::I64, &[2, 7]), t("ids", Datatype::I64, &[2, 7])]).unwrap();
        assert_eq!(ordered[0].name, "ids");
        assert_eq!(rows, 2);
        assert_eq!(key, vec![(Datatype::I64 as u8, vec![7]), (Datatype::I64 as u8, vec![7])]);
        let cases = [
            (vec![t("ids", Datatype::I64, &[2, 7])], "input mask is missing"),
            (
                vec![t("ids", Datatype::F32, &[2, 7]), t("mask", Datatype::I64, &[2, 7])],
                "is FP32, the model takes INT64",
            ),
            (vec![t("ids", Datatype::I64, &[2, 7, 1]), t("mask", Datatype::I64, &[2, 7])], "has shape"),
            (vec![t("ids", Datatype::I64, &[2, 7]), t("mask", Datatype::I64, &[3, 7])], "3 rows"),
            (
                vec![t("ids", Datatype::I64, &[1, 7]), t("mask", Datatype::I64, &[1, 7]), t("x", Datatype::I64, &[1])],
                "no input x",
            ),
            (vec![t("ids", Datatype::I64, &[0, 7]), t("mask", Datatype::I64, &[0, 7])], "at least one row"),
        ];
        for (given, want) in cases {
            let e = check_inputs(&specs, given).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        let fixed = [spec("x", "FP32", &[1, 3, 224, 224])];
        assert!(check_inputs(&fixed, vec![t("x", Datatype::F32, &[1, 3, 224, 200])]).is_err());
    }

    #[test]
    fn outputs_split_back_by_rows() {
        let data: Vec<u8> = (0..24).collect();
        let out = v1::RawTensor { name: "y".into(), datatype: "FP32".into(), shape: vec![3, 2], data: data.into() };
        let per = split(vec![out.clone()], &[1, 2]).unwrap();
        assert_eq!(per[0][0].shape, vec![1, 2]);
        assert_eq!(per[0][0].data, (0..8).collect::<Vec<u8>>());
        assert_eq!(per[1][0].shape, vec![2, 2]);
        assert_eq!(per[1][0].data, (8..24).collect::<Vec<u8>>());
        let e = split(vec![out], &[1, 1]).unwrap_err();
        assert!(e.contains("not one row per input row"), "{e}");
    }
}
