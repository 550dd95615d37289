//! `idunno job …`: inference jobs (SPEC §5, §10). Tables for people; with
//! `--json` the documents of the scripting contract.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use idunno_rpc::{JobsClient, Limited, RpcError, v1};
use serde_json::Value;
use tonic::transport::Channel;

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Add a job: a model and an input set in SDFS (checked against each other).
    Add {
        job: String,
        /// SDFS name of an ONNX model.
        #[arg(long)]
        model: String,
        /// SDFS name of the input set (.npy or IDX); for a model with several
        /// inputs, one per input in the model's order or as INPUT=FILE,
        /// separated by commas or given several times.
        #[arg(long, value_delimiter = ',', required = true)]
        inputs: Vec<String>,
        /// SDFS name of the labels (one integer per input; negative: unknown).
        #[arg(long)]
        labels: Option<String>,
        #[arg(long)]
        batch_size: u32,
        /// Passes over the input set before the job is done (default: loop until stopped).
        #[arg(long)]
        passes: Option<u64>,
        /// What a result holds per input: class (with labels, the default) or vector.
        #[arg(long)]
        output: Option<String>,
        /// Give the model each sample's axes in this order: axis i of what
        /// the model gets is axis P[i] of a sample (channels-last photos for
        /// a channels-first model: 2,0,1). Single-input models only.
        #[arg(long, value_delimiter = ',')]
        transpose: Vec<u32>,
    },
    /// Start (or resume) a job.
    Start { job: String },
    /// Stop a running job (its progress is kept).
    Stop { job: String },
    /// Remove a job that is not running.
    Remove { job: String },
    /// Query rate, latency and accuracy of every job or one (C1, C2).
    Status { job: Option<String> },
    /// Change a job's batch size while it runs (C3).
    SetBatchSize { job: String, batch_size: u32 },
    /// A job's outputs, one row per input (C4); also in SDFS as <job>.results.
    Results {
        job: String,
        /// Write the rows to this file as JSON instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Which workers serve which job (C5).
    Assignments,
}

pub(crate) async fn client(addr: &str) -> Result<JobsClient<Channel>, CliError> {
    // `job add` reads the model and the input set: allow it time.
    let ch = idunno_rpc::connect_channel_with(addr, Duration::from_secs(5), Duration::from_secs(120)).await?;
    Ok(JobsClient::new(ch).limited())
}

fn parse(bytes: &[u8]) -> Result<Value, CliError> {
    serde_json::from_slice(bytes).map_err(|e| CliError::failed(format!("unreadable reply: {e}")))
}

pub async fn run(cmd: JobCommand, node: Option<String>, out: Output) -> Result<(), CliError> {
    let addr = target::resolve(node);
    let mut c = client(&addr).await?;
    let status = |s| CliError::from(RpcError::from_status(&addr, s));
    match cmd {
        JobCommand::Add { job, model, inputs, labels, batch_size, passes, output, transpose } => {
            let req = v1::AddJobRequest {
                name: job.clone(),
                model,
                inputs,
                labels: labels.unwrap_or_default(),
                batch_size,
                passes: passes.unwrap_or(0),
                output: output.unwrap_or_default(),
                transpose,
            };
            let r = c.add_job(req).await.map_err(status)?.into_inner();
            done(out, &job, "added", &r.message)
        }
        JobCommand::Start { job } => control(&mut c, &addr, out, job, "start", 0).await,
        JobCommand::Stop { job } => control(&mut c, &addr, out, job, "stop", 0).await,
        JobCommand::Remove { job } => control(&mut c, &addr, out, job, "remove", 0).await,
        JobCommand::SetBatchSize { job, batch_size } => {
            control(&mut c, &addr, out, job, "set-batch-size", batch_size).await
        }
        JobCommand::Status { job } => {
            let r = c
                .status(v1::JobQuery { job: job.unwrap_or_default(), explain: false })
                .await
                .map_err(status)?
                .into_inner();
            let doc = parse(&r.json)?;
            if out.json {
                return out.json(&doc);
            }
            print_status(&doc);
            Ok(())
        }
        JobCommand::Assignments => {
            if out.json {
                let r = c
                    .assignments(v1::JobQuery { job: String::new(), explain: false })
                    .await
                    .map_err(status)?
                    .into_inner();
                return out.json(&parse(&r.json)?);
            }
            let r =
                c.assignments(v1::JobQuery { job: String::new(), explain: true }).await.map_err(status)?.into_inner();
            let doc = parse(&r.json)?;
            let mut t = table(&["JOB", "WORKERS", "COST ms/query", "PREDICTED q/s", "MEASURED q/s"]);
            for (job, a) in doc.as_object().into_iter().flatten() {
                let workers: Vec<String> =
                    a["workers"].as_array().into_iter().flatten().map(|w| worker_line(a, w)).collect();
                t.add_row(vec![
                    job.clone(),
                    workers.join("\n"),
                    num(&a["cost_ms"], 2),
                    num(&a["predicted_rate"], 1),
                    num(&a["query_rate"], 1),
                ]);
            }
            println!("{t}");
            println!(
                "Each free worker slot takes the next query of the job with the fewest queries handed out, so query\n\
                 rates come out equal, a costlier job holds more of the workers' time, and a worker with more slots or\n\
                 faster ones runs more of every job's queries. Predicted: Σ over workers of slots / Σ its cost per\n\
                 query over the last 10 s, with every slot always busy (right after a change it lags by that window)."
            );
            if let Some(b) = mean_slot_busy(&doc).filter(|b| *b < 0.85) {
                println!(
                    "The slots were busy {:.0}% of the time: the workers are not what limits these rates (their slots\n\
                     wait for queries, which cost less to run than to hand out and count), so the measured rate is\n\
                     below the prediction.",
                    b * 100.0
                );
            }
            Ok(())
        }
        JobCommand::Results { job, out: file } => {
            let rows = idunno_jobs::results::fetch(&mut c, &job).await.map_err(status)?;
            if let Some(path) = file {
                let written = std::fs::File::create(&path).and_then(|f| write_rows(std::io::BufWriter::new(f), &rows));
                written.map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
                if out.json {
                    return out.json(&serde_json::json!({"file": path, "rows": rows.len()}));
                }
                println!("{} rows -> {}", rows.len(), path.display());
                return Ok(());
            }
            if out.json {
                return write_rows(std::io::BufWriter::new(std::io::stdout().lock()), &rows)
                    .map_err(|e| CliError::failed(format!("writing the rows: {e}")));
            }
            let mut t = table(&["QUERY", "PASS", "INPUT", "OUTPUT"]);
            for row in &rows {
                let mut o = row.output.to_json().to_string();
                if o.len() > 60 {
                    o.truncate(57);
                    o.push_str("...");
                }
                t.add_row(vec![row.query.to_string(), row.pass.to_string(), row.input.to_string(), o]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

/// One worker of a job in `job assignments`: its slots (when not one),
/// its share of its time on the job and of the job's queries.
fn worker_line(a: &Value, w: &Value) -> String {
    let key = w.to_string();
    let mut line = w.to_string();
    if let Some(n) = a["worker_slots"][&key].as_u64().filter(|n| *n != 1) {
        line.push_str(&format!(" ({n} slots)"));
    }
    let time = a["worker_shares"][&key].as_f64();
    let queries = a["worker_query_shares"][&key].as_f64();
    match (time, queries) {
        (Some(t), Some(q)) => {
            line.push_str(&format!(": {:.0}% of its time, {:.0}% of the queries", t * 100.0, q * 100.0))
        }
        (Some(t), None) => line.push_str(&format!(": {:.0}% of its time", t * 100.0)),
        _ => {}
    }
    if let Some(b) = a["worker_slots_busy"][&key].as_f64() {
        line.push_str(&format!("; slots busy {:.0}%", b * 100.0));
    }
    line
}

/// The mean share of their slots' time the workers of these assignments
/// spent running queries, if any was measured.
fn mean_slot_busy(doc: &Value) -> Option<f64> {
    let mut busy: BTreeMap<String, f64> = BTreeMap::new();
    for a in doc.as_object().into_iter().flatten().map(|(_, a)| a) {
        for (w, b) in a["worker_slots_busy"].as_object().into_iter().flatten() {
            busy.extend(b.as_f64().map(|b| (w.clone(), b)));
        }
    }
    (!busy.is_empty()).then(|| busy.values().sum::<f64>() / busy.len() as f64)
}

/// Rows as SPEC's JSON array, one row per line, written as they go
/// (millions of rows never become one document in memory).
fn write_rows(mut w: impl std::io::Write, rows: &[idunno_jobs::results::Row]) -> std::io::Result<()> {
    w.write_all(b"[")?;
    for (i, r) in rows.iter().enumerate() {
        w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut w, &r.to_json())?;
    }
    w.write_all(b"\n]\n")?;
    w.flush()
}

async fn control(
    c: &mut JobsClient<Channel>,
    addr: &str,
    out: Output,
    job: String,
    action: &str,
    batch_size: u32,
) -> Result<(), CliError> {
    let req = v1::ControlRequest { job: job.clone(), action: action.to_string(), batch_size };
    let r = c.control(req).await.map_err(|s| RpcError::from_status(addr, s))?.into_inner();
    done(out, &job, action, &r.message)
}

fn done(out: Output, job: &str, action: &str, message: &str) -> Result<(), CliError> {
    if out.json {
        return out.json(&serde_json::json!({"job": job, "action": action, "message": message}));
    }
    println!("{message}");
    Ok(())
}

fn list(v: &Value) -> String {
    v.as_array().map(|a| a.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

pub(crate) fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn print_status(doc: &Value) {
    let mut t = table(&[
        "JOB", "STATE", "BATCH", "RATE q/s", "QUERIES", "INPUTS", "AVG ms", "STD", "VAR ms²", "P50", "P90", "P95",
        "P99", "ACCURACY", "LOSS", "WORKERS",
    ]);
    let (train, infer): (Vec<&Value>, Vec<&Value>) =
        doc.as_array().into_iter().flatten().partition(|j| j["kind"].as_str() == Some("train"));
    for j in infer {
        let l = &j["latency_ms"];
        let acc = j["accuracy"].as_f64().map_or("-".into(), |a| format!("{:.1}%", a * 100.0));
        t.add_row(vec![
            j["job"].as_str().unwrap_or_default().to_string(),
            j["state"].as_str().unwrap_or_default().to_string(),
            j["batch_size"].to_string(),
            num(&j["query_rate"], 2),
            j["queries_done"].to_string(),
            j["inputs_done"].to_string(),
            num(&l["avg"], 2),
            num(&l["std"], 2),
            num(&l["var"], 2),
            num(&l["median"], 2),
            num(&l["p90"], 2),
            num(&l["p95"], 2),
            num(&l["p99"], 2),
            acc,
            num(&j["loss"], 4),
            list(&j["workers"]),
        ]);
    }
    if t.row_count() > 0 || train.is_empty() {
        println!("{t}");
    }
    if !train.is_empty() {
        print_trainings(&train);
    }
    for j in doc.as_array().into_iter().flatten() {
        if let Some(e) = j["error"].as_str() {
            println!("{}: {e}", j["job"].as_str().unwrap_or_default());
        }
    }
}

fn print_trainings(train: &[&Value]) {
    let pct = |v: &Value| v.as_f64().map_or("-".into(), |a| format!("{:.2}%", a * 100.0));
    let mut t = table(&[
        "TRAINING",
        "STATE",
        "ARCH",
        "EPOCHS DONE",
        "STEP",
        "LOSS",
        "TRAIN ACC",
        "TEST ACC",
        "WORKERS",
        "GENERATION",
        "MODEL",
    ]);
    for j in train {
        t.add_row(vec![
            j["job"].as_str().unwrap_or_default().to_string(),
            j["state"].as_str().unwrap_or_default().to_string(),
            j["arch"].as_str().unwrap_or_default().to_string(),
            format!("{}/{}", j["epoch"], j["epochs"]),
            format!("{}/{}", j["step"], j["steps"]),
            num(&j["loss"], 4),
            pct(&j["train_accuracy"]),
            pct(&j["test_accuracy"]),
            list(&j["workers"]),
            j["generation"].to_string(),
            match j["model_version"].as_u64() {
                Some(v) => format!("{} v{v}", j["model"].as_str().unwrap_or_default()),
                None => "-".into(),
            },
        ]);
    }
    println!("{t}");
}
