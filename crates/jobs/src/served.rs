//! The worker's side of online serving: a node sends this worker a batch
//! of a served model's requests (`Infer`); it runs on the slots, in the
//! served model's fair-queuing flow, and the outputs go back. Which
//! workers take which model, and the requests themselves, are the serving
//! layer's (`idunno-serve`); here a batch is only checked and run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_rpc::{Limited, v1};
use tokio::sync::oneshot;
use tonic::Status;

use crate::Jobs;
use crate::slots::{InferError, InferWork, SlotWork, from_raw, served_flow, to_raw};

/// How long a batch may wait and run here when the caller set no
/// deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Run `batch` on this node's slots. `timeout` is the caller's deadline.
pub(crate) async fn infer(
    jobs: &Arc<Jobs>,
    batch: v1::InferBatch,
    timeout: Option<Duration>,
) -> Result<v1::InferBatchReply, Status> {
    let state = jobs.coordinator.local_state();
    if state.state.nodes.is_draining(jobs.id) {
        return Err(Status::unavailable(format!("node {} is draining", jobs.id)));
    }
    // The caller's state may be ahead of this node's: that is this
    // worker's to catch up with, and another one may have.
    let served = state
        .state
        .serving
        .models
        .get(&batch.model)
        .ok_or_else(|| Status::unavailable(format!("node {} does not serve {} (yet)", jobs.id, batch.model)))?;
    if served.spec.model_version != batch.model_version {
        return Err(Status::unavailable(format!(
            "node {} serves {} at version {}, not {}",
            jobs.id, batch.model, served.spec.model_version, batch.model_version
        )));
    }
    let key = (served.spec.model.clone(), served.spec.model_version);
    let model = jobs
        .served
        .file(&key)
        .ok_or_else(|| Status::unavailable(format!("node {} has not fetched {} yet", jobs.id, key.0)))?;
    let specs = &served.spec.inputs;
    if batch.inputs.len() != specs.len() {
        return Err(Status::invalid_argument(format!(
            "{} takes {} inputs, {} given",
            batch.model,
            specs.len(),
            batch.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(specs.len());
    for (spec, raw) in specs.iter().zip(batch.inputs) {
        if raw.name != spec.name {
            return Err(Status::invalid_argument(format!("input {} given where {} belongs", raw.name, spec.name)));
        }
        let (_, t) = from_raw(raw).map_err(Status::invalid_argument)?;
        inputs.push(t);
    }
    let queue = jobs
        .slot_queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| Status::unavailable(format!("node {}'s worker slots are not running", jobs.id)))?;
    let deadline = Instant::now() + timeout.unwrap_or(DEFAULT_DEADLINE);
    let (reply, done) = oneshot::channel();
    let work = InferWork { key, model, inputs, reply, deadline };
    queue.push(&served_flow(&batch.model), SlotWork::Infer(work), u64::from(batch.requests.max(1)), served.spec.weight);
    let ran = tokio::time::timeout_at(deadline.into(), done)
        .await
        .map_err(|_| Status::deadline_exceeded(format!("the batch did not run on node {} in time", jobs.id)))?;
    match ran {
        Ok(Ok((outputs, latency_us))) => Ok(v1::InferBatchReply {
            outputs: outputs.into_iter().map(|(name, t)| to_raw(name, t)).collect(),
            latency_us,
        }),
        Ok(Err(InferError::Input(why))) => Err(Status::invalid_argument(why)),
        Ok(Err(InferError::Worker(why))) => Err(Status::unavailable(format!("node {}: {why}", jobs.id))),
        Err(_) => Err(Status::unavailable(format!("node {}'s worker stopped", jobs.id))),
    }
}

/// Defaults of `serve add`.
pub const DEFAULT_MAX_BATCH: u32 = 8;
pub const DEFAULT_MAX_DELAY_MS: u32 = 1;
pub const DEFAULT_MAX_QUEUE: u32 = 1024;

/// `serve add`: the model's latest version is read from SDFS and loaded
/// once here, so that only a model that loads, with tensors the protocol
/// can carry, is served; its inputs and outputs become the model's
/// metadata.
pub(crate) async fn add(jobs: &Jobs, req: v1::ServeAddRequest) -> Result<idunno_state::ServeSpec, Status> {
    let (state, _) = jobs.coordinator.read().await.map_err(idunno_coordinator::service::status_of)?;
    if state.state.serving.models.contains_key(&req.name) {
        return Err(Status::already_exists(format!("a model named {} is served already", req.name)));
    }
    let version = crate::validate::latest(&state.state, &req.model, "model")?;
    let (_, bytes) = jobs
        .sdfs
        .get(&req.model, version)
        .await
        .map_err(|e| Status::unavailable(format!("reading {} from SDFS: {e}", req.model)))?;
    let trained = idunno_ml::trained::is_model_file(&bytes);
    let name = req.model.clone();
    let model = tokio::task::spawn_blocking(move || idunno_ml::Model::load(&bytes, 1))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            idunno_ml::onnx::MlError::BadModel(why) => Status::invalid_argument(format!(
                "{name} is not a model idunno can serve (ONNX, or trained by idunno train): {why}"
            )),
            other => Status::failed_precondition(other.to_string()),
        })?;
    let tensors = |sigs: &[idunno_ml::onnx::Signature], what: &str| -> Result<Vec<idunno_state::TensorSpec>, Status> {
        sigs.iter()
            .map(|s| {
                let d = s.dtype.ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{}: {what} {} is of a type idunno cannot serve yet",
                        req.model, s.name
                    ))
                })?;
                Ok(idunno_state::TensorSpec {
                    name: s.name.clone(),
                    datatype: crate::slots::datatype(d).to_string(),
                    shape: s.shape.iter().map(|x| (*x).max(-1)).collect(),
                })
            })
            .collect()
    };
    let inputs = tensors(model.inputs(), "input")?;
    let outputs = tensors(model.outputs(), "output")?;
    drop(model);
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    let spec = idunno_state::ServeSpec {
        name: req.name,
        model: req.model,
        model_version: version,
        platform: if trained { "idunno".into() } else { "onnxruntime_onnx".into() },
        inputs,
        outputs,
        max_batch: or(req.max_batch, DEFAULT_MAX_BATCH),
        max_delay_ms: if req.delay_given { req.max_delay_ms } else { DEFAULT_MAX_DELAY_MS },
        max_queue: or(req.max_queue, DEFAULT_MAX_QUEUE),
        weight: or(req.weight, 1),
        added_ms: crate::now_ms(),
    };
    spec.check().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// `serve status`: every served model with its figures summed over the
/// nodes that answered (each node's own come from the serving layer's
/// hook, [`Jobs::on_serve_figures`]).
pub(crate) async fn status(jobs: &Arc<Jobs>) -> serde_json::Value {
    use serde_json::{Value, json};
    if jobs.coordinator.local_state().state.serving.models.is_empty() {
        // Nothing to ask the other nodes about.
        return Value::Array(Vec::new());
    }
    let members: Vec<(u64, String)> = jobs
        .membership
        .view()
        .members
        .into_iter()
        .filter(|m| m.state.is_up())
        .map(|m| (m.identity.id.0, m.identity.addr.to_string()))
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    for (id, addr) in members.into_iter().filter(|(id, _)| *id != jobs.id) {
        calls.spawn(async move {
            let ch = idunno_rpc::connect_channel(&addr, Duration::from_secs(2)).await.ok()?;
            let mut c = idunno_rpc::JobsClient::new(ch).limited();
            let r = c.serve_status(v1::ServeStatusRequest { local: true }).await.ok()?;
            let v: Value = serde_json::from_slice(&r.into_inner().json).ok()?;
            Some((id, v))
        });
    }
    let mut per_node = vec![(jobs.id, jobs.serve_figures())];
    while let Some(r) = calls.join_next().await {
        if let Ok(Some(x)) = r {
            per_node.push(x);
        }
    }
    let state = jobs.coordinator.local_state();
    let mut out = Vec::new();
    for (name, served) in &state.state.serving.models {
        let mut hist = idunno_state::Histogram::default();
        let (mut requests, mut recent, mut queue, mut batches, mut rows) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut window_s = 10.0;
        let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
        let mut nodes = Vec::new();
        for (id, figures) in &per_node {
            let Some(f) = figures.get(name) else { continue };
            nodes.push(*id);
            let n = |k: &str| f[k].as_u64().unwrap_or(0);
            requests += n("requests");
            recent += n("recent");
            queue += n("queue");
            batches += n("batches");
            rows += n("batched_rows");
            window_s = f["window_s"].as_f64().unwrap_or(window_s);
            if let Ok(h) = serde_json::from_value::<idunno_state::Histogram>(f["histogram"].clone()) {
                hist.merge(&h);
            }
            for (k, v) in f["errors"].as_object().into_iter().flatten() {
                *errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        let l = hist.summary();
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let spec = &served.spec;
        out.push(json!({
            "name": name,
            "model": spec.model,
            "model_version": spec.model_version,
            "platform": spec.platform,
            "request_rate": ((recent as f64 / window_s) * 100.0).round() / 100.0,
            "requests": requests,
            "errors": errors,
            "latency_ms": {"avg": r3(l.avg), "std": r3(l.std), "var": r3(l.var), "median": r3(l.median), "p90": r3(l.p90), "p95": r3(l.p95), "p99": r3(l.p99)},
            "queue": queue,
            "avg_batch": if batches == 0 { 0.0 } else { ((rows as f64 / batches as f64) * 100.0).round() / 100.0 },
            "workers": served.ready,
            "placed": served.placed,
            "workers_asked": served.workers,
            "max_batch": spec.max_batch,
            "max_delay_ms": spec.max_delay_ms,
            "max_queue": spec.max_queue,
            "weight": spec.weight,
            "nodes_counted": nodes,
        }));
    }
    Value::Array(out)
}
