//! `idunno train`: add a training job, then follow it to the end (a
//! progress bar on a terminal, a line per epoch otherwise) unless
//! `--detach`. Its status is also in `idunno job status <job>`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use idunno_rpc::{JobsClient, Limited, RpcError, v1};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tonic::transport::Channel;

use crate::error::CliError;
use crate::output::Output;
use crate::target;

#[derive(Args)]
pub struct TrainArgs {
    /// The training job's name.
    job: String,
    /// mlp (one hidden layer) or cnn (two convolutions).
    #[arg(long)]
    arch: String,
    /// SDFS name of the training samples (.npy or IDX).
    #[arg(long)]
    inputs: String,
    /// SDFS name of their labels (one class index per sample).
    #[arg(long)]
    labels: String,
    /// SDFS name of held-out samples for the test accuracy.
    #[arg(long, requires = "test_labels")]
    test_inputs: Option<String>,
    #[arg(long, requires = "test_inputs")]
    test_labels: Option<String>,
    #[arg(long)]
    epochs: u32,
    /// Samples per step, split across the workers.
    #[arg(long)]
    batch_size: u32,
    /// Workers training together (fewer if fewer are alive).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Adam's learning rate.
    #[arg(long, default_value = "0.001")]
    lr: String,
    /// A checkpoint to SDFS every this many steps (and at every epoch's end).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Seeds the initial weights and the sample order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// SDFS name for the trained model (servable by `idunno job add --model`).
    #[arg(long)]
    out: String,
    /// Return once the job is added instead of following it.
    #[arg(long)]
    detach: bool,
}

async fn client(addr: &str) -> Result<JobsClient<Channel>, CliError> {
    // Adding reads and checks the data sets: allow it time.
    let ch = idunno_rpc::connect_channel_with(addr, Duration::from_secs(5), Duration::from_secs(300)).await?;
    Ok(JobsClient::new(ch).limited())
}

pub async fn run(args: TrainArgs, node: Option<String>, out: Output) -> Result<(), CliError> {
    let req = v1::TrainRequest {
        name: args.job,
        arch: args.arch,
        inputs: args.inputs,
        labels: args.labels,
        test_inputs: args.test_inputs.unwrap_or_default(),
        test_labels: args.test_labels.unwrap_or_default(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        workers: args.workers,
        lr: args.lr,
        out: args.out,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
    };
    submit(req, node, out, args.detach).await.map(|_| ())
}

/// Add the training job and (unless `detach`) follow it to its end; the
/// last status document.
pub async fn submit(req: v1::TrainRequest, node: Option<String>, out: Output, detach: bool) -> Result<Value, CliError> {
    let addr = target::resolve(node.clone());
    let mut c = client(&addr).await?;
    let job = req.name.clone();
    let r = c.train(req).await.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
    if detach {
        let doc = serde_json::json!({"job": job, "action": "train", "message": r.message});
        if out.json {
            out.json(&doc)?;
        } else {
            println!("{}", r.message);
            println!("follow it with: idunno job status {job}");
        }
        return Ok(doc);
    }
    if !out.json {
        println!("{}", r.message);
    }
    let doc = follow(&job, node, out).await?;
    if out.json {
        out.json(&doc)?;
    } else {
        summary(&doc);
    }
    match doc["state"].as_str() {
        Some("done") => Ok(doc),
        _ => Err(CliError::failed(format!(
            "training job {job} is {}: {}",
            doc["state"].as_str().unwrap_or("?"),
            doc["error"].as_str().unwrap_or("see idunno job status")
        ))),
    }
}

/// One status document of `job`, from any live node.
async fn status_of(job: &str, node: &Option<String>) -> Result<Value, CliError> {
    let mut last = CliError::failed("no node answered");
    for addr in target::candidates(node.clone()) {
        let c = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(1), Duration::from_secs(10)).await;
        let mut c = match c {
            Ok(ch) => JobsClient::new(ch).limited(),
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        match c.status(v1::JobQuery { job: job.to_string(), explain: false }).await {
            Ok(r) => {
                let doc: Value = serde_json::from_slice(&r.into_inner().json)
                    .map_err(|e| CliError::failed(format!("unreadable reply: {e}")))?;
                return doc.get(0).cloned().ok_or_else(|| CliError::failed(format!("no such job: {job}")));
            }
            Err(s) => last = RpcError::from_status(&addr, s).into(),
        }
    }
    Err(last)
}

/// Poll until the job is no longer running, showing progress.
async fn follow(job: &str, node: Option<String>, out: Output) -> Result<Value, CliError> {
    let terminal = !out.json && std::io::stdout().is_terminal();
    let bar = if terminal { ProgressBar::new(0) } else { ProgressBar::hidden() };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut epochs_shown = 0;
    let mut generation = 0;
    let mut failing_since: Option<Instant> = None;
    loop {
        let doc = match status_of(job, &node).await {
            Ok(d) => {
                failing_since = None;
                d
            }
            // The node asked may have died: others are tried; give up
            // only after a minute of nobody answering.
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        bar.set_length(doc["steps"].as_u64().unwrap_or(0));
        bar.set_position(doc["step"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "epoch {}/{}  loss {}  train acc {}",
            (doc["epoch"].as_u64().unwrap_or(0) + 1).min(doc["epochs"].as_u64().unwrap_or(0)),
            doc["epochs"],
            num(&doc["loss"], 4),
            pct(&doc["train_accuracy"])
        ));
        let g = doc["generation"].as_u64().unwrap_or(0);
        if g > generation {
            if generation > 0 && !out.json {
                let r = doc["regroups"].as_array().and_then(|r| r.last()).cloned().unwrap_or_default();
                bar.println(format!(
                    "group re-formed (generation {g}): workers {} going on from step {}",
                    r["workers"], r["from_step"]
                ));
            }
            generation = g;
        }
        let history = doc["history"].as_array().cloned().unwrap_or_default();
        for e in history.iter().skip(epochs_shown) {
            if !out.json {
                bar.println(format!(
                    "epoch {}: loss {}, train accuracy {}, test accuracy {}",
                    e["epoch"],
                    num(&e["train"]["loss"], 4),
                    pct(&e["train"]["accuracy"]),
                    pct(&e["test"]["accuracy"])
                ));
            }
        }
        epochs_shown = history.len();
        if doc["state"].as_str() != Some("running") {
            bar.finish_and_clear();
            return Ok(doc);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
}

fn summary(doc: &Value) {
    if doc["state"].as_str() == Some("done") {
        println!(
            "trained {} in {} s: test accuracy {}; model {} v{} (serve it: idunno job add <job> --model {} …)",
            doc["job"].as_str().unwrap_or_default(),
            num(&doc["train_seconds"], 1),
            pct(&doc["test_accuracy"]),
            doc["model"].as_str().unwrap_or_default(),
            doc["model_version"],
            doc["model"].as_str().unwrap_or_default(),
        );
    }
}
