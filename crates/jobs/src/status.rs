//! The `job status` and `job assignments` documents (SPEC §10), computed
//! from the replicated state alone, so any node answers the same.

use idunno_coordinator::state::{AssignmentNote, ClusterState, Job, JobState, OutputKind};
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
    let note = state.assignment_notes.get(name).cloned().unwrap_or_default();
    let shares = shares(&note);
    json!({
        "job": name,
        "state": state_name(job.state),
        "batch_size": job.spec.batch_size,
        "query_rate": (rate * 100.0).round() / 100.0,
        "queries_done": p.queries_done,
        "inputs_done": p.inputs_done,
        "latency_ms": {
            "avg": round3(l.avg), "std": round3(l.std), "median": round3(l.median),
            "p90": round3(l.p90), "p95": round3(l.p95), "p99": round3(l.p99),
        },
        "accuracy": accuracy,
        "workers": state.assignments.get(name).cloned().unwrap_or_default(),
        "cost_ms": note.cost_us.map(|c| c as f64 / 1000.0),
        "predicted_rate": note.predicted_mqps.map(|r| r as f64 / 1000.0),
        "worker_shares": shares,
        "model": job.spec.model,
        "model_version": job.spec.model_version,
        "inputs": job.spec.inputs,
        "labels": job.spec.labels,
        "samples": job.spec.samples,
        "pass": p.pass,
        "passes": job.spec.passes,
        "output": match job.spec.output { OutputKind::Class => "class", OutputKind::Vector => "vector" },
    })
}

/// Worker id → share of its busy time, as the notes record it.
fn shares(note: &AssignmentNote) -> serde_json::Map<String, Value> {
    note.shares_permille.iter().map(|(w, s)| (w.to_string(), json!(*s as f64 / 1000.0))).collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Every job's status, or one job's; `None` if that job does not exist.
pub fn status(state: &ClusterState, job: Option<&str>, now_ms: u64) -> Option<Value> {
    let docs: Vec<Value> = state
        .jobs
        .iter()
        .filter(|(n, _)| job.is_none_or(|j| j == n.as_str()))
        .map(|(n, j)| job_status(state, n, j, now_ms))
        .collect();
    if job.is_some() && docs.is_empty() {
        return None;
    }
    Some(Value::Array(docs))
}

/// `{"<job>": [worker ids], …}`.
pub fn assignments(state: &ClusterState) -> Value {
    json!(state.assignments)
}

/// The assignment table with its reasons, per job: workers with their
/// share of time, cost per query, predicted and measured rates.
pub fn assignments_explained(state: &ClusterState, now_ms: u64) -> Value {
    let mut out = serde_json::Map::new();
    for (job, workers) in &state.assignments {
        let note = state.assignment_notes.get(job).cloned().unwrap_or_default();
        let rate = state.jobs.get(job).map_or(0.0, |j| j.progress.query_rate(now_ms));
        out.insert(
            job.clone(),
            json!({
                "workers": workers,
                "worker_shares": shares(&note),
                "cost_ms": note.cost_us.map(|c| c as f64 / 1000.0),
                "predicted_rate": note.predicted_mqps.map(|r| r as f64 / 1000.0),
                "query_rate": (rate * 100.0).round() / 100.0,
            }),
        );
    }
    Value::Object(out)
}
