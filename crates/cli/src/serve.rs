//! `idunno serve …`: models served online over the Open Inference
//! Protocol (KServe v2) by every node: add, remove, status.

use clap::Subcommand;
use idunno_rpc::{RpcError, v1};
use serde_json::Value;

use crate::error::CliError;
use crate::job::num;
use crate::output::{Output, table};
use crate::target;

#[derive(Subcommand)]
pub enum ServeCommand {
    /// Serve a model file in SDFS (its latest version) under NAME at /v2/models/NAME on every node.
    Add {
        name: String,
        /// SDFS name of the model (ONNX, or trained by `idunno train`).
        #[arg(long)]
        model: String,
        /// Requests' rows run together, at most (dynamic batching; default 8).
        #[arg(long)]
        max_batch: Option<u32>,
        /// How long a batch waits for more requests after its first (default 1 ms).
        #[arg(long)]
        max_delay_ms: Option<u32>,
        /// Requests waiting at one node beyond this are refused with 429 (default 1024).
        #[arg(long)]
        max_queue: Option<u32>,
        /// Under overload, request rates of served models are in the ratio of their weights (default 1).
        #[arg(long)]
        weight: Option<u32>,
        /// How many workers load the model (the leader picks them and replaces any that die; default: every one).
        #[arg(long)]
        workers: Option<u32>,
    },
    /// Stop serving a model.
    Remove { name: String },
    /// Every served model: request rate, latency, queue, batch sizes, workers, errors.
    Status,
}

pub async fn run(cmd: ServeCommand, node: Option<String>, out: Output) -> Result<(), CliError> {
    let addr = target::resolve(node);
    let mut c = crate::job::client(&addr).await?;
    let status = |s| CliError::from(RpcError::from_status(&addr, s));
    match cmd {
        ServeCommand::Add { name, model, max_batch, max_delay_ms, max_queue, weight, workers } => {
            let req = v1::ServeAddRequest {
                name: name.clone(),
                model,
                max_batch: max_batch.unwrap_or(0),
                max_delay_ms: max_delay_ms.unwrap_or(0),
                max_queue: max_queue.unwrap_or(0),
                weight: weight.unwrap_or(0),
                delay_given: max_delay_ms.is_some(),
                workers: workers.unwrap_or(0),
            };
            let r = c.serve_add(req).await.map_err(status)?.into_inner();
            if out.json {
                return out.json(&serde_json::json!({"name": name, "action": "added", "message": r.message}));
            }
            println!("{}", r.message);
            Ok(())
        }
        ServeCommand::Remove { name } => {
            let r = c.serve_remove(v1::ServeRemoveRequest { name: name.clone() }).await.map_err(status)?.into_inner();
            if out.json {
                return out.json(&serde_json::json!({"name": name, "action": "removed", "message": r.message}));
            }
            println!("{}", r.message);
            Ok(())
        }
        ServeCommand::Status => {
            let r = c.serve_status(v1::ServeStatusRequest { local: false }).await.map_err(status)?.into_inner();
            let doc: Value =
                serde_json::from_slice(&r.json).map_err(|e| CliError::failed(format!("unreadable reply: {e}")))?;
            if out.json {
                return out.json(&doc);
            }
            let mut t = table(&[
                "NAME",
                "MODEL",
                "RATE req/s",
                "REQUESTS",
                "P50 ms",
                "P95",
                "P99",
                "QUEUE",
                "AVG BATCH",
                "WORKERS",
                "ERRORS",
            ]);
            for m in doc.as_array().into_iter().flatten() {
                let l = &m["latency_ms"];
                let errors: Vec<String> =
                    m["errors"].as_object().into_iter().flatten().map(|(k, v)| format!("{k} {v}")).collect();
                t.add_row(vec![
                    m["name"].as_str().unwrap_or_default().to_string(),
                    format!("{} v{}", m["model"].as_str().unwrap_or_default(), m["model_version"]),
                    num(&m["request_rate"], 2),
                    m["requests"].to_string(),
                    num(&l["median"], 2),
                    num(&l["p95"], 2),
                    num(&l["p99"], 2),
                    m["queue"].to_string(),
                    num(&m["avg_batch"], 1),
                    workers(m),
                    if errors.is_empty() { "-".into() } else { errors.join(", ") },
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

/// The ready workers, and those placed that are still loading the model.
fn workers(m: &Value) -> String {
    let ids = |k: &str| -> Vec<u64> { m[k].as_array().into_iter().flatten().filter_map(Value::as_u64).collect() };
    let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let ready = ids("workers");
    let loading: Vec<u64> = ids("placed").into_iter().filter(|w| !ready.contains(w)).collect();
    match (ready.is_empty(), loading.is_empty()) {
        (_, true) => list(&ready),
        (true, false) => format!("loading on {}", list(&loading)),
        (false, false) => format!("{} (loading on {})", list(&ready), list(&loading)),
    }
}
