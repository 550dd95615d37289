//! How commands and states are read: a command's flat JSON goes to the
//! domain its op names, and a state in the older flat JSON shape (one
//! table per field, from snapshots written before the domains were
//! split) is still understood.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::{
    AssignmentNote, ClusterState, Command, EventCommand, FileCommand, Files, Histogram, Job, JobCommand, JobProgress,
    JobResults, JobSpec, JobState, JobTable, Jobs, Namespace, NodeCommand, ServeCommand, ServeSpec, Served,
    ServingTable, TrainCommand, TrainingTable, Trainings,
};

/// Every op, for the error that names an unknown one.
static ALL_OPS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let ops = FileCommand::OPS
        .iter()
        .chain(JobCommand::OPS)
        .chain(TrainCommand::OPS)
        .chain(EventCommand::OPS)
        .chain(NodeCommand::OPS)
        .chain(ServeCommand::OPS);
    ops.copied().collect()
});

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let op = match value.get("op") {
            Some(serde_json::Value::String(op)) => op.as_str(),
            Some(_) => return Err(D::Error::custom("op must be a string")),
            None => return Err(D::Error::missing_field("op")),
        };
        let of = |e: serde_json::Error| D::Error::custom(e);
        if FileCommand::OPS.contains(&op) {
            FileCommand::deserialize(value).map(Command::Files).map_err(of)
        } else if JobCommand::OPS.contains(&op) {
            JobCommand::deserialize(value).map(Command::Jobs).map_err(of)
        } else if TrainCommand::OPS.contains(&op) {
            TrainCommand::deserialize(value).map(Command::Training).map_err(of)
        } else if EventCommand::OPS.contains(&op) {
            EventCommand::deserialize(value).map(Command::Events).map_err(of)
        } else if NodeCommand::OPS.contains(&op) {
            NodeCommand::deserialize(value).map(Command::Nodes).map_err(of)
        } else if ServeCommand::OPS.contains(&op) {
            ServeCommand::deserialize(value).map(Command::Serving).map_err(of)
        } else {
            Err(D::Error::unknown_variant(op, ALL_OPS.as_slice()))
        }
    }
}

/// The state as it was laid out before the domains were split (every
/// table a field of its own), as older snapshot files hold it.
#[derive(Deserialize)]
pub struct FlatClusterState {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    files: Files,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    jobs: Jobs,
    assignments: BTreeMap<String, Vec<u64>>,
    #[serde(default)]
    assignment_notes: BTreeMap<String, AssignmentNote>,
    #[serde(default, deserialize_with = "crate::bounded::ordmap")]
    trainings: Trainings,
    #[serde(default)]
    version_floor: u64,
}

impl From<FlatClusterState> for ClusterState {
    fn from(f: FlatClusterState) -> Self {
        ClusterState {
            namespace: Namespace { files: f.files, version_floor: f.version_floor },
            inference: JobTable { jobs: f.jobs, assignments: f.assignments, assignment_notes: f.assignment_notes },
            training: TrainingTable { jobs: f.trainings },
            events: Default::default(),
            nodes: Default::default(),
            serving: Default::default(),
        }
    }
}

/// A job's definition as formats 1 to 6 of the binary state hold it
/// (fields are positional): before sharded input sets.
#[derive(Clone, Deserialize, serde::Serialize)]
struct JobSpecV6 {
    name: String,
    model: String,
    model_version: u64,
    inputs: String,
    input_files: Vec<crate::FileRef>,
    labels: Option<String>,
    labels_version: u64,
    batch_size: u32,
    samples: u64,
    passes: Option<u64>,
    output: crate::OutputKind,
    max_batch: u32,
    transpose: Vec<u32>,
}

impl From<JobSpecV6> for JobSpec {
    fn from(v: JobSpecV6) -> Self {
        let JobSpecV6 {
            name,
            model,
            model_version,
            inputs,
            input_files,
            labels,
            labels_version,
            batch_size,
            samples,
            passes,
            output,
            max_batch,
            transpose,
        } = v;
        JobSpec {
            name,
            model,
            model_version,
            inputs,
            input_files,
            labels,
            labels_version,
            batch_size,
            samples,
            passes,
            output,
            max_batch,
            transpose,
            input_shards: Vec::new(),
            label_shards: Vec::new(),
        }
    }
}

impl From<&JobSpec> for JobSpecV6 {
    /// (What an older release would have written: for tests.)
    fn from(s: &JobSpec) -> Self {
        let s = s.clone();
        JobSpecV6 {
            name: s.name,
            model: s.model,
            model_version: s.model_version,
            inputs: s.inputs,
            input_files: s.input_files,
            labels: s.labels,
            labels_version: s.labels_version,
            batch_size: s.batch_size,
            samples: s.samples,
            passes: s.passes,
            output: s.output,
            max_batch: s.max_batch,
            transpose: s.transpose,
        }
    }
}

/// The job table as format 6 of the binary state holds it: job
/// definitions without shards.
#[derive(Deserialize, serde::Serialize)]
pub struct JobTableV6 {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    jobs: imbl::OrdMap<String, JobV6>,
    assignments: BTreeMap<String, Vec<u64>>,
    assignment_notes: BTreeMap<String, AssignmentNote>,
}

#[derive(Clone, Deserialize, serde::Serialize)]
struct JobV6 {
    spec: JobSpecV6,
    state: JobState,
    progress: JobProgress,
    results: JobResults,
}

impl From<JobTableV6> for JobTable {
    fn from(v: JobTableV6) -> Self {
        let jobs = v.jobs.into_iter().map(|(name, j)| {
            (name, Job { spec: j.spec.into(), state: j.state, progress: j.progress, results: j.results })
        });
        JobTable { jobs: jobs.collect(), assignments: v.assignments, assignment_notes: v.assignment_notes }
    }
}

impl From<&JobTable> for JobTableV6 {
    /// (What an older release would have written: for tests.)
    fn from(t: &JobTable) -> Self {
        let jobs = t.jobs.iter().map(|(name, j)| {
            let job = JobV6 {
                spec: (&j.spec).into(),
                state: j.state,
                progress: j.progress.clone(),
                results: j.results.clone(),
            };
            (name.clone(), job)
        });
        JobTableV6 {
            jobs: jobs.collect(),
            assignments: t.assignments.clone(),
            assignment_notes: t.assignment_notes.clone(),
        }
    }
}

/// The jobs as formats 1 to 5 of the binary state hold them (their
/// fields are positional): progress without the loss.
type JobsV5 = imbl::OrdMap<String, JobV5>;

#[derive(Clone, Deserialize, serde::Serialize)]
struct JobV5 {
    spec: JobSpecV6,
    state: JobState,
    progress: JobProgressV5,
    results: JobResults,
}

#[derive(Clone, Deserialize, serde::Serialize)]
struct JobProgressV5 {
    queries_done: u64,
    inputs_done: u64,
    pass: u64,
    done: Vec<(u64, u64)>,
    labeled: u64,
    correct: u64,
    latency: Histogram,
    recent: BTreeMap<u64, u64>,
    started_at_ms: u64,
    error: Option<String>,
}

fn jobs_from_v5(jobs: JobsV5) -> Jobs {
    jobs.into_iter()
        .map(|(name, j)| {
            let JobProgressV5 {
                queries_done,
                inputs_done,
                pass,
                done,
                labeled,
                correct,
                latency,
                recent,
                started_at_ms,
                error,
            } = j.progress;
            let progress = JobProgress {
                queries_done,
                inputs_done,
                pass,
                done,
                labeled,
                correct,
                latency,
                recent,
                started_at_ms,
                error,
                loss_count: 0,
                loss_micro: 0,
            };
            (name, Job { spec: j.spec.into(), state: j.state, progress, results: j.results })
        })
        .collect()
}

/// (What an older release would have written: for tests.)
fn jobs_to_v5(jobs: &Jobs) -> JobsV5 {
    jobs.iter()
        .map(|(name, j)| {
            let p = j.progress.clone();
            let progress = JobProgressV5 {
                queries_done: p.queries_done,
                inputs_done: p.inputs_done,
                pass: p.pass,
                done: p.done,
                labeled: p.labeled,
                correct: p.correct,
                latency: p.latency,
                recent: p.recent,
                started_at_ms: p.started_at_ms,
                error: p.error,
            };
            (name.clone(), JobV5 { spec: (&j.spec).into(), state: j.state, progress, results: j.results.clone() })
        })
        .collect()
}

/// The job table as formats 4 and 5 of the binary state hold it: jobs
/// without their loss, notes without the workers' busy time.
#[derive(Deserialize, serde::Serialize)]
pub struct JobTableV5 {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    jobs: JobsV5,
    assignments: BTreeMap<String, Vec<u64>>,
    assignment_notes: BTreeMap<String, AssignmentNoteV5>,
}

#[derive(Deserialize, serde::Serialize)]
struct AssignmentNoteV5 {
    cost_us: Option<u64>,
    predicted_mqps: Option<u64>,
    shares_permille: Vec<(u64, u32)>,
    queries_permille: Vec<(u64, u32)>,
    slots: Vec<(u64, u32)>,
}

impl From<JobTableV5> for JobTable {
    fn from(v: JobTableV5) -> Self {
        let notes = v.assignment_notes.into_iter().map(|(job, n)| {
            let AssignmentNoteV5 { cost_us, predicted_mqps, shares_permille, queries_permille, slots } = n;
            let note = AssignmentNote {
                cost_us,
                predicted_mqps,
                shares_permille,
                queries_permille,
                slots,
                busy_permille: vec![],
            };
            (job, note)
        });
        JobTable { jobs: jobs_from_v5(v.jobs), assignments: v.assignments, assignment_notes: notes.collect() }
    }
}

impl From<&JobTable> for JobTableV5 {
    /// (What an older release would have written: for tests.)
    fn from(t: &JobTable) -> Self {
        let notes = t.assignment_notes.iter().map(|(job, n)| {
            let n = n.clone();
            let old = AssignmentNoteV5 {
                cost_us: n.cost_us,
                predicted_mqps: n.predicted_mqps,
                shares_permille: n.shares_permille,
                queries_permille: n.queries_permille,
                slots: n.slots,
            };
            (job.clone(), old)
        });
        JobTableV5 { jobs: jobs_to_v5(&t.jobs), assignments: t.assignments.clone(), assignment_notes: notes.collect() }
    }
}

/// The job table as formats 1 to 3 of the binary state hold it:
/// assignment notes without each worker's share of the queries and its
/// slots, and jobs without their loss.
#[derive(Deserialize, serde::Serialize)]
pub struct JobTableV3 {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    jobs: JobsV5,
    assignments: BTreeMap<String, Vec<u64>>,
    assignment_notes: BTreeMap<String, AssignmentNoteV3>,
}

#[derive(Deserialize, serde::Serialize)]
struct AssignmentNoteV3 {
    cost_us: Option<u64>,
    predicted_mqps: Option<u64>,
    shares_permille: Vec<(u64, u32)>,
}

impl From<JobTableV3> for JobTable {
    fn from(v: JobTableV3) -> Self {
        let notes = v.assignment_notes.into_iter().map(|(job, n)| {
            let AssignmentNoteV3 { cost_us, predicted_mqps, shares_permille } = n;
            (job, AssignmentNote { cost_us, predicted_mqps, shares_permille, ..Default::default() })
        });
        JobTable { jobs: jobs_from_v5(v.jobs), assignments: v.assignments, assignment_notes: notes.collect() }
    }
}

impl From<&JobTable> for JobTableV3 {
    /// (What an older release would have written: for tests.)
    fn from(t: &JobTable) -> Self {
        let notes = t.assignment_notes.iter().map(|(job, n)| {
            let n = n.clone();
            let old = AssignmentNoteV3 {
                cost_us: n.cost_us,
                predicted_mqps: n.predicted_mqps,
                shares_permille: n.shares_permille,
            };
            (job.clone(), old)
        });
        JobTableV3 { jobs: jobs_to_v5(&t.jobs), assignments: t.assignments.clone(), assignment_notes: notes.collect() }
    }
}

/// The served models as format 4 of the binary state holds them: before
/// placement (each model then loaded by every worker, as it is now when
/// it asks for 0 workers).
#[derive(Deserialize, serde::Serialize)]
pub struct ServingTableV4 {
    models: BTreeMap<String, ServedV4>,
}

#[derive(Deserialize, serde::Serialize)]
struct ServedV4 {
    spec: ServeSpec,
    ready: Vec<u64>,
}

impl From<ServingTableV4> for ServingTable {
    fn from(v: ServingTableV4) -> Self {
        let models = v.models.into_iter().map(|(name, s)| {
            // The ready workers stand until the leader places the model.
            let placed = s.ready.clone();
            (name, Served { spec: s.spec, ready: s.ready, workers: 0, placed })
        });
        ServingTable { models: models.collect() }
    }
}

impl From<&ServingTable> for ServingTableV4 {
    /// (What an older release would have written: for tests.)
    fn from(t: &ServingTable) -> Self {
        let models =
            t.models.iter().map(|(name, s)| (name.clone(), ServedV4 { spec: s.spec.clone(), ready: s.ready.clone() }));
        ServingTableV4 { models: models.collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_op_is_in_two_domains() {
        let mut all = ALL_OPS.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL_OPS.len(), "an op is in two domains");
    }

    /// One command of every kind survives the wire: each domain's `OPS`
    /// names all its variants (a variant left out could not be read).
    #[test]
    fn every_command_round_trips() {
        use crate::{DoneQuery, FileRef, JobSpec, JobState, Score, TrainReport, TrainSpec};
        let job = || "j".to_string();
        let f = || FileRef { name: "f".into(), version: 1 };
        let commands: Vec<Command> = vec![
            FileCommand::CommitFileVersion {
                name: job(),
                size: 1,
                blake3: "ab".into(),
                replicas: vec![1],
                keep: 1,
                now_ms: 1,
            }
            .into(),
            FileCommand::DeleteFile { name: job(), now_ms: 1 }.into(),
            FileCommand::ForgetFiles { names: vec![job()] }.into(),
            FileCommand::SetReplicas { name: job(), version: 1, replicas: vec![2] }.into(),
            JobCommand::AddJob { spec: JobSpec::default() }.into(),
            JobCommand::SetJobState { job: job(), state: JobState::Running, now_ms: 1 }.into(),
            JobCommand::SetBatchSize { job: job(), batch_size: 2 }.into(),
            JobCommand::RemoveJob { job: job() }.into(),
            JobCommand::SetAssignments { assignments: Default::default(), notes: Default::default() }.into(),
            JobCommand::CompleteQueries {
                job: job(),
                expect_done: 0,
                queries: vec![DoneQuery {
                    start: 0,
                    len: 1,
                    latency_us: 1,
                    labeled: 0,
                    correct: 0,
                    loss_count: 0,
                    loss_micro: 0,
                }],
                now_ms: 1,
                segment: None,
            }
            .into(),
            JobCommand::DropResults { job: job(), files: vec![f()] }.into(),
            JobCommand::CompactResults { job: job(), expect_base: None, base: f(), segments: vec![f()] }.into(),
            JobCommand::RecordProgress { job: job(), queries: 1, inputs: 1 }.into(),
            JobCommand::FailJob { job: job(), error: "e".into(), now_ms: 3 }.into(),
            TrainCommand::AddTraining { spec: TrainSpec::default(), now_ms: 1 }.into(),
            TrainCommand::SetTrainGroup { job: job(), generation: 1, workers: vec![1], now_ms: 1 }.into(),
            TrainCommand::ReportTraining {
                job: job(),
                generation: 1,
                // An epoch's end without a held-out set.
                report: TrainReport {
                    step: 4,
                    checkpoint_version: Some(2),
                    train: Score::default(),
                    epoch_end: Some(None),
                    model_version: None,
                },
                now_ms: 1,
            }
            .into(),
            TrainCommand::FailTraining { job: job(), error: "e".into(), now_ms: 3 }.into(),
            EventCommand::RecordEvents {
                events: vec![crate::NewEvent {
                    at_ms: 1,
                    kind: crate::EventKind::MemberDead,
                    node: 3,
                    job: None,
                    detail: "d".into(),
                    key: "k".into(),
                    by: 1,
                }],
            }
            .into(),
            NodeCommand::DrainNode { node: 3, generation: 7, now_ms: 1 }.into(),
            NodeCommand::UndrainNode { node: 3 }.into(),
            ServeCommand::AddServed {
                spec: crate::ServeSpec {
                    name: "m".into(),
                    model: "f".into(),
                    model_version: 1,
                    platform: "onnxruntime_onnx".into(),
                    inputs: vec![crate::TensorSpec { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 3] }],
                    outputs: vec![],
                    max_batch: 1,
                    max_delay_ms: 0,
                    max_queue: 1,
                    weight: 1,
                    added_ms: 1,
                },
                workers: 2,
            }
            .into(),
            ServeCommand::RemoveServed { name: "m".into() }.into(),
            ServeCommand::SetServeReady { ready: [("m".to_string(), vec![1, 2])].into() }.into(),
            ServeCommand::SetServePlacement { placed: [("m".to_string(), vec![1, 2])].into() }.into(),
        ];
        assert_eq!(commands.len(), ALL_OPS.len(), "a command of every op");
        for c in commands {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn unknown_and_malformed_ops_are_named() {
        let e = serde_json::from_str::<Command>(r#"{"op":"explode"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown variant `explode`"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"op":7}"#).unwrap_err().to_string();
        assert!(e.contains("op must be a string"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"name":"f"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `op`"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"op":"delete_file"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `name`"), "{e}");
    }
}
