//! The replicated state machine: everything the cluster must not forget
//! (the SDFS namespace, the job table, assignments, job progress), changed
//! only by [`Command`]s that went through the Raft log.
//!
//! **Invariant:** plain data and pure functions. No I/O, no clock, no
//! randomness: every replica applies the same commands in the same order
//! and must reach the same state, refusals included. Time enters only as
//! the leader's timestamp inside a command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod files;
mod histogram;
mod jobs;
mod results;
mod training;
mod trainings;

pub use histogram::{Histogram, LatencySummary};
pub use results::{JobResults, ResultSegment, is_current, pass_done};

pub use training::{EpochRecord, Regroup, Score, TrainGroup, TrainProgress, TrainReport, TrainSpec, Training};

/// How many versions of a file are kept unless a command says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 5;

/// The largest batch a job or a training may ask for: a query's inputs
/// and outputs travel in single messages, and a batch is held in memory
/// whole on a worker. A job may have a lower bound of its own
/// ([`JobSpec::max_batch`]).
pub const MAX_BATCH_SIZE: u32 = 65_536;

/// The SDFS namespace: file name → its versions. A persistent map, so a
/// copy of the state (published after every applied batch, taken for
/// every snapshot) shares its entries instead of copying them: a commit
/// costs O(log n), not O(n).
pub type Files = imbl::OrdMap<String, FileEntry>;

/// The job tables, persistent for the same reason: a commit that changes
/// one job copies that job, not the table.
pub type Jobs = imbl::OrdMap<String, Job>;
pub type Trainings = imbl::OrdMap<String, Training>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// SDFS namespace: file name → its versions.
    pub files: Files,
    /// Job table: job name → definition, state and progress.
    pub jobs: Jobs,
    /// Which workers serve which job (the scheduler's last decision).
    pub assignments: BTreeMap<String, Vec<u64>>,
    /// Why: the measurements behind `assignments`, per job.
    #[serde(default)]
    pub assignment_notes: BTreeMap<String, AssignmentNote>,
    /// Training jobs (`idunno train`): job name → definition, group and
    /// progress. Job names are one namespace with `jobs`.
    #[serde(default)]
    pub trainings: Trainings,
    /// The first version of a file whose name is not in `files`: above
    /// every version of a forgotten name (see [`Command::ForgetFiles`]),
    /// so a version number never means two contents, even after a deleted
    /// name's entry is collected.
    #[serde(default)]
    pub version_floor: u64,
}

/// What the scheduler measured and predicted for a job when it last
/// recorded the assignments (integers, so replicas compare exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentNote {
    /// Processing time per query (moving average), µs.
    pub cost_us: Option<u64>,
    /// The query rate the fair split predicts, in thousandths of a query/s.
    pub predicted_mqps: Option<u64>,
    /// (worker, thousandths of its busy time spent on this job in the
    /// last 10 s). A list, not a map: integer map keys do not survive the
    /// tagged `Command` enum's JSON.
    pub shares_permille: Vec<(u64, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Oldest first; at most `keep` of them.
    pub versions: Vec<FileVersion>,
    /// The number the next put gets: versions never repeat, even after a
    /// delete and a new put of the same name.
    pub next_version: u64,
    /// The leader's clock when the file was deleted: the entry is then a
    /// tombstone (no versions), kept until the leader forgets it.
    #[serde(default)]
    pub deleted_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub version: u64,
    pub size: u64,
    /// BLAKE3 of the whole content, hex.
    pub blake3: String,
    /// Nodes holding a durable replica.
    pub replicas: Vec<u64>,
    /// The leader's clock when the version was committed (ms since epoch).
    pub committed_at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// SDFS name of the model.
    pub model: String,
    /// The model version the job runs, pinned at `job add` (0: unpinned,
    /// only in hand-written commands) so a later put cannot change a
    /// running job under its workers.
    #[serde(default)]
    pub model_version: u64,
    /// SDFS name of the input set (for a model with several inputs, the
    /// files joined by commas, in the model's input order).
    pub inputs: String,
    /// One file per model input, in the model's order, versions pinned.
    #[serde(default)]
    pub input_files: Vec<FileRef>,
    /// SDFS name of the labels, if any.
    pub labels: Option<String>,
    #[serde(default)]
    pub labels_version: u64,
    pub batch_size: u32,
    /// Samples in the input set: a pass is done when all are.
    #[serde(default)]
    pub samples: u64,
    /// Passes over the input set before the job is done; none: loop.
    #[serde(default)]
    pub passes: Option<u64>,
    #[serde(default)]
    pub output: OutputKind,
    /// The largest batch whose outputs fit in one message, as `job add`
    /// measured the model's outputs (0: not known, [`MAX_BATCH_SIZE`]).
    #[serde(default)]
    pub max_batch: u32,
    /// The order in which a sample's axes are given to the model (empty:
    /// as they are): asked for explicitly (`job add --transpose`), never
    /// guessed.
    #[serde(default)]
    pub transpose: Vec<u32>,
}

impl JobSpec {
    /// The largest batch size this job takes.
    pub fn batch_limit(&self) -> u32 {
        if self.max_batch == 0 { MAX_BATCH_SIZE } else { self.max_batch.min(MAX_BATCH_SIZE) }
    }
}

/// One SDFS file version a job reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub version: u64,
}

/// What a result row holds per input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The predicted class: the index of the largest value of the first
    /// output (or the value itself when the model outputs one number).
    #[default]
    Class,
    /// The first output's values for the input.
    Vector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Added,
    Running,
    Stopped,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    pub state: JobState,
    pub progress: JobProgress,
    /// Where the counted queries' outputs are (see [`JobResults`]).
    #[serde(default)]
    pub results: JobResults,
}

/// How far a job got, changed only by committed query completions: the
/// single source of truth for exactly-once accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub queries_done: u64,
    pub inputs_done: u64,
    /// The pass under way (0-based): the pass of the first input not
    /// done. Later passes may already be partly done.
    #[serde(default)]
    pub pass: u64,
    /// Work done, as ranges `[start, end)` of positions in the job's
    /// stream of inputs (position `k` is input `k % samples` of pass
    /// `k / samples`): sorted, disjoint, merged. A query overlapping them
    /// is a repeat and is not counted. Passes need no barrier: a worker may
    /// run the next pass while the last queries of this one finish.
    #[serde(default)]
    pub done: Vec<(u64, u64)>,
    /// Inputs with a known label, and how many of those were predicted
    /// right (accuracy = correct / labeled).
    #[serde(default)]
    pub labeled: u64,
    #[serde(default)]
    pub correct: u64,
    /// Query processing times.
    #[serde(default)]
    pub latency: Histogram,
    /// Queries completed per 100 ms slot of the leader's clock, for the
    /// last [`RATE_WINDOW_MS`]: the query rate.
    #[serde(default)]
    pub recent: BTreeMap<u64, u64>,
    /// The leader's clock when the job last started (ms since epoch).
    #[serde(default)]
    pub started_at_ms: u64,
    /// Why the job failed (cleared when it runs again).
    #[serde(default)]
    pub error: Option<String>,
}

/// The window of the query rate (SPEC: queries/s over the last 10 s).
pub const RATE_WINDOW_MS: u64 = 10_000;
const RATE_SLOT_MS: u64 = 100;

impl JobProgress {
    /// Whether input range `[start, start + len)` overlaps what is done.
    pub fn overlaps_done(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.done.iter().any(|&(s, e)| s < end && start < e)
    }

    fn mark_done(&mut self, start: u64, len: u64) {
        self.done.push((start, start + len));
        self.done.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.done.len());
        for &(s, e) in &self.done {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.done = merged;
    }

    /// Queries per second over the last [`RATE_WINDOW_MS`] before `now_ms`
    /// (or since the job started, if that is more recent).
    pub fn query_rate(&self, now_ms: u64) -> f64 {
        let from_slot = now_ms.saturating_sub(RATE_WINDOW_MS) / RATE_SLOT_MS;
        let n: u64 = self.recent.range(from_slot + 1..).map(|(_, c)| c).sum();
        let window = RATE_WINDOW_MS.min(now_ms.saturating_sub(self.started_at_ms)).max(1000);
        n as f64 * 1000.0 / window as f64
    }
}

/// One finished query as the leader commits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneQuery {
    /// First position in the job's input stream (see
    /// [`JobProgress::done`]) and number of inputs; a query never spans
    /// two passes.
    pub start: u64,
    pub len: u64,
    /// Processing time on the worker.
    pub latency_us: u64,
    /// Inputs with a label, and how many were predicted right.
    pub labeled: u64,
    pub correct: u64,
}

/// A change to the state. Commands are validated when applied, so a
/// refused command changes nothing on any replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A new version of `name` whose bytes `replicas` hold durably.
    CommitFileVersion {
        name: String,
        size: u64,
        blake3: String,
        replicas: Vec<u64>,
        keep: u32,
        now_ms: u64,
    },
    /// Forget every version of `name`.
    DeleteFile {
        name: String,
        /// The leader's clock (when the tombstone may be collected).
        #[serde(default)]
        now_ms: u64,
    },
    /// Drop the tombstones of deleted names (entries without versions);
    /// names that have versions again are left alone. Their version
    /// numbers stay used: `version_floor` rises above them.
    ForgetFiles {
        names: Vec<String>,
    },
    /// Record where the replicas of one version now live (after repair).
    SetReplicas {
        name: String,
        version: u64,
        replicas: Vec<u64>,
    },
    AddJob {
        spec: JobSpec,
    },
    SetJobState {
        job: String,
        state: JobState,
        /// The leader's clock (starts the rate window).
        #[serde(default)]
        now_ms: u64,
    },
    SetBatchSize {
        job: String,
        batch_size: u32,
    },
    RemoveJob {
        job: String,
    },
    /// Replace the whole assignment table (and its notes).
    SetAssignments {
        assignments: BTreeMap<String, Vec<u64>>,
        #[serde(default)]
        notes: BTreeMap<String, AssignmentNote>,
    },
    /// Count finished queries of a running job, all or none: refused if
    /// the job's count is not `expect_done` (another leader got there
    /// first) or if any query repeats finished work, so each query counts
    /// once. Query numbers `expect_done + 1 …` go to `queries` in order.
    CompleteQueries {
        job: String,
        expect_done: u64,
        queries: Vec<DoneQuery>,
        now_ms: u64,
        /// The file holding these queries' rows, written before the
        /// command: it joins the job's results with the count.
        #[serde(default)]
        segment: Option<ResultSegment>,
    },
    /// Result segments whose rows later passes all replaced: gone from
    /// the job's results (the leader then deletes the files).
    DropResults {
        job: String,
        files: Vec<FileRef>,
    },
    /// `base` holds the rows of the job's base `expect_base` and of its
    /// first segments `segments`, which it replaces.
    CompactResults {
        job: String,
        expect_base: Option<FileRef>,
        base: FileRef,
        segments: Vec<FileRef>,
    },
    /// Count finished work of a job (no exactly-once check; benchmarks).
    RecordProgress {
        job: String,
        queries: u64,
        inputs: u64,
    },
    /// A training job, checked by the node that took the request; it
    /// starts running at once (its group is formed next).
    AddTraining {
        spec: TrainSpec,
        now_ms: u64,
    },
    /// Form generation `generation` of a training group: refused unless it
    /// is the next one, so of two proposers (the leader noticing a death,
    /// a member finding the group stuck) only one wins.
    SetTrainGroup {
        job: String,
        generation: u64,
        workers: Vec<u64>,
        now_ms: u64,
    },
    /// Progress of a training group: refused from a generation that is
    /// not the current one, or for a step behind the recorded one.
    ReportTraining {
        job: String,
        generation: u64,
        report: TrainReport,
        now_ms: u64,
    },
    /// An inference job cannot go on: its queries fail (its error is
    /// shown by `job status`).
    FailJob {
        job: String,
        error: String,
    },
    /// A training job cannot go on (its error is shown by `job status`).
    FailTraining {
        job: String,
        error: String,
    },
}

/// What an applied command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    /// The version a commit got, and the versions it pushed out.
    Committed {
        version: u64,
        dropped: Vec<u64>,
    },
    /// The versions a delete removed.
    Deleted {
        versions: Vec<u64>,
    },
    /// Query completions counted: numbers `first_query …`; `finished`
    /// when that was the job's last pass.
    Completed {
        first_query: u64,
        finished: bool,
    },
}

/// Why a command was refused. Nothing changed, on any replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    #[error("{what} must not be empty")]
    Empty { what: String },
    #[error("no such file: {name}")]
    NoSuchFile { name: String },
    #[error("file {name} has no version {version}")]
    NoSuchVersion { name: String, version: u64 },
    #[error("replica list {replicas:?} names a node twice")]
    DuplicateReplica { replicas: Vec<u64> },
    #[error("keep must be at least 1")]
    KeepZero,
    #[error("job {job} already exists")]
    JobExists { job: String },
    #[error("no such job: {job}")]
    NoSuchJob { job: String },
    #[error("batch size must be at least 1")]
    BatchSizeZero,
    #[error("batch size {batch_size} is too large: at most {max} (a query's outputs must fit in one message)")]
    BatchSizeTooLarge { batch_size: u32, max: u32 },
    #[error("transpose {transpose:?} is not an order of axes 0, 1, …")]
    BadTranspose { transpose: Vec<u32> },
    #[error("job {job} is {from:?} and cannot become {to:?}")]
    BadTransition { job: String, from: JobState, to: JobState },
    #[error("job {job} is running: stop it first")]
    JobRunning { job: String },
    #[error("job {job} is not running")]
    JobNotRunning { job: String },
    #[error("job {job} has {actual} queries done, not {expected}: a newer count exists")]
    StaleCount { job: String, expected: u64, actual: u64 },
    #[error("job {job}: query at position {start} (+{len}) repeats finished work or is outside the job's passes")]
    RepeatedQuery { job: String, start: u64, len: u64 },
    #[error("training job {job} is at generation {current}; generation {given} is not the {wanted}")]
    StaleGeneration { job: String, current: u64, given: u64, wanted: String },
    #[error("training job {job} has {current} steps done; a report of {given} is behind or beyond its {total}")]
    BadStep { job: String, current: u64, given: u64, total: u64 },
    #[error("{0}")]
    BadTraining(String),
    #[error("results of job {job}: {reason}")]
    BadResults { job: String, reason: String },
}

/// The outcome replicated to the client: a refusal is an answer, not a
/// failure of the log.
pub type Applied = Result<Reply, Refusal>;

fn non_empty(what: &str, s: &str) -> Result<(), Refusal> {
    if s.trim().is_empty() { Err(Refusal::Empty { what: what.to_string() }) } else { Ok(()) }
}

/// Whether `p` holds each of `0..p.len()` once (empty: yes).
fn is_permutation(p: &[u32]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter().all(|&i| seen.get_mut(i as usize).is_some_and(|s| !std::mem::replace(s, true)))
}

fn distinct(replicas: &[u64]) -> Result<(), Refusal> {
    let mut v = replicas.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.len() != replicas.len() {
        return Err(Refusal::DuplicateReplica { replicas: replicas.to_vec() });
    }
    Ok(())
}

impl ClusterState {
    /// Apply one command: either the state changes and a reply says how, or
    /// a refusal says why not and the state is exactly as before.
    pub fn apply(&mut self, cmd: Command) -> Applied {
        match cmd {
            Command::CommitFileVersion { name, size, blake3, replicas, keep, now_ms } => {
                self.commit_file_version(name, size, blake3, replicas, keep, now_ms)
            }
            Command::DeleteFile { name, now_ms } => self.delete_file(name, now_ms),
            Command::ForgetFiles { names } => self.forget_files(names),
            Command::SetReplicas { name, version, replicas } => self.set_replicas(name, version, replicas),
            Command::AddJob { spec } => self.add_job(spec),
            Command::SetJobState { job, state, .. } if self.trainings.contains_key(&job) => {
                self.set_training_state(job, state)
            }
            Command::SetJobState { job, state, now_ms } => self.set_job_state(job, state, now_ms),
            Command::SetBatchSize { job, .. } if self.trainings.contains_key(&job) => {
                Err(Refusal::BadTraining(format!("{job} is a training job: its batch size is fixed when it is added")))
            }
            Command::SetBatchSize { job, batch_size } => self.set_batch_size(job, batch_size),
            Command::RemoveJob { job } if self.trainings.contains_key(&job) => self.remove_training(job),
            Command::RemoveJob { job } => self.remove_job(job),
            Command::SetAssignments { assignments, notes } => {
                if let Some(job) = assignments.keys().chain(notes.keys()).find(|j| !self.jobs.contains_key(*j)) {
                    return Err(Refusal::NoSuchJob { job: job.clone() });
                }
                for workers in assignments.values() {
                    distinct(workers)?;
                }
                self.assignments = assignments;
                self.assignment_notes = notes;
                Ok(Reply::Done)
            }
            Command::CompleteQueries { job, expect_done, queries, now_ms, segment } => {
                self.complete_queries(job, expect_done, queries, now_ms, segment)
            }
            Command::DropResults { job, files } => {
                self.job_mut(&job)?.drop_segments(&files);
                Ok(Reply::Done)
            }
            Command::CompactResults { job, expect_base, base, segments } => {
                self.job_mut(&job)?.compact(expect_base, base, &segments)?;
                Ok(Reply::Done)
            }
            Command::RecordProgress { job, queries, inputs } => {
                let p = &mut self.job_mut(&job)?.progress;
                p.queries_done = p.queries_done.saturating_add(queries);
                p.inputs_done = p.inputs_done.saturating_add(inputs);
                Ok(Reply::Done)
            }
            Command::AddTraining { spec, now_ms } => self.add_training(spec, now_ms),
            Command::SetTrainGroup { job, generation, workers, now_ms } => {
                self.set_train_group(job, generation, workers, now_ms)
            }
            Command::ReportTraining { job, generation, report, now_ms } => {
                self.report_training(job, generation, report, now_ms)
            }
            Command::FailJob { job, error } => {
                let j = self.job_mut(&job)?;
                if j.state != JobState::Running {
                    return Err(Refusal::JobNotRunning { job });
                }
                j.state = JobState::Failed;
                j.progress.error = Some(error);
                Ok(Reply::Done)
            }
            Command::FailTraining { job, error } => self.fail_training(job, error),
        }
    }

    fn training_mut(&mut self, job: &str) -> Result<&mut Training, Refusal> {
        self.trainings.get_mut(job).ok_or_else(|| Refusal::NoSuchJob { job: job.to_string() })
    }

    fn job_mut(&mut self, job: &str) -> Result<&mut Job, Refusal> {
        self.jobs.get_mut(job).ok_or_else(|| Refusal::NoSuchJob { job: job.to_string() })
    }

    /// The invariants every reachable state keeps; tests check them after
    /// every command.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (name, f) in &self.files {
            if f.versions.windows(2).any(|w| w[0].version >= w[1].version) {
                return Err(format!("{name}: versions not increasing"));
            }
            if f.versions.iter().any(|v| v.version >= f.next_version) {
                return Err(format!("{name}: a version is not below next_version"));
            }
            if f.versions.iter().any(|v| distinct(&v.replicas).is_err()) {
                return Err(format!("{name}: a replica list repeats a node"));
            }
        }
        for (name, j) in &self.jobs {
            if j.spec.batch_size == 0 || j.spec.batch_size > j.spec.batch_limit() {
                return Err(format!("job {name}: batch size {} out of bounds", j.spec.batch_size));
            }
            let p = &j.progress;
            if p.done.windows(2).any(|w| w[0].1 >= w[1].0) || p.done.iter().any(|&(s, e)| s >= e) {
                return Err(format!("job {name}: done ranges not sorted, disjoint and merged: {:?}", p.done));
            }
            let end = j.spec.passes.map_or(u64::MAX, |n| n.saturating_mul(j.spec.samples.max(1)));
            if p.done.last().is_some_and(|&(_, e)| e > end) {
                return Err(format!("job {name}: done ranges beyond the job's passes"));
            }
            if p.correct > p.labeled || p.latency.count > p.queries_done {
                return Err(format!("job {name}: counts disagree"));
            }
            let segs = &j.results.segments;
            let ordered = segs.iter().zip(segs.iter().skip(1)).all(|(a, b)| a.first_query + a.queries <= b.first_query);
            if !ordered || segs.last().is_some_and(|s| s.first_query + s.queries > p.queries_done + 1) {
                return Err(format!("job {name}: result segments out of order or beyond the count"));
            }
        }
        for (name, t) in &self.trainings {
            let p = &t.progress;
            if self.jobs.contains_key(name) {
                return Err(format!("{name} is both an inference and a training job"));
            }
            if p.step > t.spec.total_steps() || p.checkpoint.is_some_and(|(_, s)| s > p.step) {
                return Err(format!(
                    "training {name}: step {} or its checkpoint {:?} out of range",
                    p.step, p.checkpoint
                ));
            }
            if (t.state == JobState::Done) != p.model_version.is_some() {
                return Err(format!("training {name}: done without a model, or a model while not done"));
            }
            if distinct(&t.group.workers).is_err() || p.epochs.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
                return Err(format!("training {name}: its group repeats a node or its epochs are out of order"));
            }
        }
        if let Some(j) =
            self.assignments.keys().chain(self.assignment_notes.keys()).find(|j| !self.jobs.contains_key(*j))
        {
            return Err(format!("assignment for unknown job {j}"));
        }
        Ok(())
    }
}

/// The job life cycle: added → running ⇄ stopped; running → done | failed;
/// a stopped, done or failed job may run again.
fn allowed(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Added, Running)
            | (Running, Stopped)
            | (Running, Done)
            | (Running, Failed)
            | (Stopped, Running)
            | (Done, Running)
            | (Failed, Running)
            | (Added, Stopped)
    )
}
