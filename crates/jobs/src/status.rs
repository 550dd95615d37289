//! The `job status` and `job assignments` documents (SPEC §10), computed
//! from the replicated state alone, so any node answers the same.

use idunno_state::{AssignmentNote, ClusterState, Job, JobState, OutputKind, Score, Training};
use serde_json::{Value, json};

pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Added => "added",
        JobState::Running => "running",
        JobState::Stopped => "stopped",
        JobState::Done => "done",
        JobState::Failed => "failed",
    }
}

/// One job's status at `now_ms` (the query rate's window ends there).
pub fn job_status(state: &ClusterState, name: &str, job: &Job, now_ms: u64) -> Value {
    let p = &job.progress;
    let l = p.latency.summary();
    let accuracy = (p.labeled > 0).then(|| p.correct as f64 / p.labeled as f64);
    let rate = if job.state == JobState::Running { p.query_rate(now_ms) } else { 0.0 };
    let note = state.inference.assignment_notes.get(name).cloned().unwrap_or_default();
    let shares = shares(&note);
    json!({
        "job": name,
        "kind": "infer",
        "state": state_name(job.state),
        "batch_size": job.spec.batch_size,
        "query_rate": (rate * 100.0).round() / 100.0,
        "queries_done": p.queries_done,
        "inputs_done": p.inputs_done,
        "latency_ms": {
            "avg": round3(l.avg), "std": round3(l.std), "var": round3(l.var), "median": round3(l.median),
            "p90": round3(l.p90), "p95": round3(l.p95), "p99": round3(l.p99),
        },
        "accuracy": accuracy,
        "loss": p.loss().map(|x| (x * 1e6).round() / 1e6),
        "workers": state.inference.assignments.get(name).cloned().unwrap_or_default(),
        "cost_ms": note.cost_us.map(|c| c as f64 / 1000.0),
        "predicted_rate": note.predicted_mqps.map(|r| r as f64 / 1000.0),
        "worker_shares": shares,
        "worker_query_shares": per_worker(&note.queries_permille, 1000.0),
        "worker_slots": slots(&note),
        "worker_slots_busy": per_worker(&note.busy_permille, 1000.0),
        "model": job.spec.model,
        "model_version": job.spec.model_version,
        "inputs": job.spec.inputs,
        "labels": job.spec.labels,
        "samples": job.spec.samples,
        "pass": p.pass,
        "passes": job.spec.passes,
        "output": match job.spec.output { OutputKind::Class => "class", OutputKind::Vector => "vector" },
        "error": p.error,
        "transpose": job.spec.transpose,
    })
}

/// Worker id → share of its busy time, as the notes record it.
fn shares(note: &AssignmentNote) -> serde_json::Map<String, Value> {
    per_worker(&note.shares_permille, 1000.0)
}

/// Worker id → its query slots.
fn slots(note: &AssignmentNote) -> serde_json::Map<String, Value> {
    note.slots.iter().map(|(w, n)| (w.to_string(), json!(n))).collect()
}

/// Worker id → a note's figure for it, divided by `unit`.
fn per_worker(figures: &[(u64, u32)], unit: f64) -> serde_json::Map<String, Value> {
    figures.iter().map(|(w, x)| (w.to_string(), json!(*x as f64 / unit))).collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn score(s: &Score) -> Value {
    json!({"loss": s.loss().map(round4), "accuracy": s.accuracy().map(round4), "samples": s.count})
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// A training job's status: the contract's fields (`accuracy` is the
/// last test accuracy, `inputs_done` the samples trained on, no queries)
/// and its own: epoch, step, loss, train and test accuracy per epoch,
/// its group and checkpoint.
pub fn training_status(name: &str, t: &Training) -> Value {
    let p = &t.progress;
    let spec = &t.spec;
    let spe = spec.steps_per_epoch().max(1);
    let last = p.epochs.last();
    let test_acc = last.and_then(|e| e.test.as_ref()).and_then(Score::accuracy);
    let epochs: Vec<Value> = p
        .epochs
        .iter()
        .map(|e| json!({"epoch": e.epoch, "train": score(&e.train), "test": e.test.as_ref().map(score), "at_ms": e.at_ms}))
        .collect();
    let current = t.current_score();
    let elapsed_ms = if p.finished_at_ms > 0 { p.finished_at_ms.saturating_sub(p.started_at_ms) } else { 0 };
    json!({
        "job": name,
        "kind": "train",
        "state": state_name(t.state),
        "batch_size": spec.batch_size,
        "query_rate": 0.0,
        "queries_done": 0,
        "inputs_done": (p.step * u64::from(spec.batch_size)).min(spec.samples * u64::from(spec.epochs)),
        "latency_ms": null,
        "accuracy": test_acc.map(round4),
        "workers": t.group.workers,
        "arch": spec.arch,
        "epoch": (p.step / spe).min(u64::from(spec.epochs)),
        "epochs": spec.epochs,
        "step": p.step,
        "steps": spec.total_steps(),
        "loss": current.loss().map(round4),
        "train_accuracy": current.accuracy().map(round4),
        "test_accuracy": test_acc.map(round4),
        "history": epochs,
        "generation": t.group.generation,
        "regroups": p.regroups.iter().map(|r| json!({"generation": r.generation, "workers": r.workers, "from_step": r.from_step, "at_ms": r.at_ms})).collect::<Vec<_>>(),
        "checkpoint": p.checkpoint.map(|(version, step)| json!({"file": spec.checkpoint_file(), "version": version, "step": step})),
        "model": spec.out,
        "model_version": p.model_version,
        "inputs": spec.inputs.name,
        "labels": spec.labels.name,
        "samples": spec.samples,
        "wanted_workers": spec.workers,
        "lr": spec.lr,
        "error": p.error,
        "train_seconds": (elapsed_ms > 0).then(|| elapsed_ms as f64 / 1000.0),
    })
}

/// Every job's status (inference and training, by name), or one job's;
/// `None` if that job does not exist.
pub fn status(state: &ClusterState, job: Option<&str>, now_ms: u64) -> Option<Value> {
    let wanted = |n: &String| job.is_none_or(|j| j == n.as_str());
    let mut docs: Vec<(String, Value)> = state
        .inference
        .jobs
        .iter()
        .filter(|(n, _)| wanted(n))
        .map(|(n, j)| (n.clone(), job_status(state, n, j, now_ms)))
        .collect();
    docs.extend(state.training.jobs.iter().filter(|(n, _)| wanted(n)).map(|(n, t)| (n.clone(), training_status(n, t))));
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    if job.is_some() && docs.is_empty() {
        return None;
    }
    Some(Value::Array(docs.into_iter().map(|(_, d)| d).collect()))
}

/// `{"<job>": [worker ids], …}`.
/// Training jobs list their group's members.
pub fn assignments(state: &ClusterState) -> Value {
    let mut table = state.inference.assignments.clone();
    for (name, t) in &state.training.jobs {
        if !t.group.workers.is_empty() {
            table.insert(name.clone(), t.group.workers.clone());
        }
    }
    json!(table)
}

/// The assignment table with its reasons, per job: workers with their
/// share of time, cost per query, predicted and measured rates.
pub fn assignments_explained(state: &ClusterState, now_ms: u64) -> Value {
    let mut out = serde_json::Map::new();
    for (job, workers) in &state.inference.assignments {
        let note = state.inference.assignment_notes.get(job).cloned().unwrap_or_default();
        let rate = state.inference.jobs.get(job).map_or(0.0, |j| j.progress.query_rate(now_ms));
        out.insert(
            job.clone(),
            json!({
                "workers": workers,
                "worker_shares": shares(&note),
                "worker_query_shares": per_worker(&note.queries_permille, 1000.0),
                "worker_slots": slots(&note),
                "worker_slots_busy": per_worker(&note.busy_permille, 1000.0),
                "cost_ms": note.cost_us.map(|c| c as f64 / 1000.0),
                "predicted_rate": note.predicted_mqps.map(|r| r as f64 / 1000.0),
                "query_rate": (rate * 100.0).round() / 100.0,
            }),
        );
    }
    Value::Object(out)
}
