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

/// How many versions of a file are kept unless a command says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 5;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// SDFS namespace: file name → its versions.
    pub files: BTreeMap<String, FileEntry>,
    /// Job table: job name → definition, state and progress.
    pub jobs: BTreeMap<String, Job>,
    /// Which workers serve which job (the scheduler's last decision).
    pub assignments: BTreeMap<String, Vec<u64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Oldest first; at most `keep` of them.
    pub versions: Vec<FileVersion>,
    /// The number the next put gets: versions never repeat, even after a
    /// delete and a new put of the same name.
    pub next_version: u64,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// SDFS name of the model.
    pub model: String,
    /// SDFS name of the input set.
    pub inputs: String,
    /// SDFS name of the labels, if any.
    pub labels: Option<String>,
    pub batch_size: u32,
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub queries_done: u64,
    pub inputs_done: u64,
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
    },
    SetBatchSize {
        job: String,
        batch_size: u32,
    },
    RemoveJob {
        job: String,
    },
    /// Replace the whole assignment table.
    SetAssignments {
        assignments: BTreeMap<String, Vec<u64>>,
    },
    /// Count finished work of a job.
    RecordProgress {
        job: String,
        queries: u64,
        inputs: u64,
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
    #[error("job {job} is {from:?} and cannot become {to:?}")]
    BadTransition { job: String, from: JobState, to: JobState },
    #[error("job {job} is running: stop it first")]
    JobRunning { job: String },
}

/// The outcome replicated to the client: a refusal is an answer, not a
/// failure of the log.
pub type Applied = Result<Reply, Refusal>;

fn non_empty(what: &str, s: &str) -> Result<(), Refusal> {
    if s.trim().is_empty() { Err(Refusal::Empty { what: what.to_string() }) } else { Ok(()) }
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
                non_empty("file name", &name)?;
                non_empty("checksum", &blake3)?;
                distinct(&replicas)?;
                if replicas.is_empty() {
                    return Err(Refusal::Empty { what: "replica list".into() });
                }
                if keep == 0 {
                    return Err(Refusal::KeepZero);
                }
                let entry = self.files.entry(name).or_default();
                let version = entry.next_version.max(1);
                entry.next_version = version + 1;
                entry.versions.push(FileVersion { version, size, blake3, replicas, committed_at_ms: now_ms });
                let excess = entry.versions.len().saturating_sub(keep as usize);
                let dropped = entry.versions.drain(..excess).map(|v| v.version).collect();
                Ok(Reply::Committed { version, dropped })
            }
            Command::DeleteFile { name } => {
                let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
                let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
                // The entry stays (empty) so version numbers never repeat.
                let versions = entry.versions.drain(..).map(|v| v.version).collect();
                Ok(Reply::Deleted { versions })
            }
            Command::SetReplicas { name, version, replicas } => {
                distinct(&replicas)?;
                let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
                let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
                let Some(v) = entry.versions.iter_mut().find(|v| v.version == version) else {
                    return Err(Refusal::NoSuchVersion { name, version });
                };
                v.replicas = replicas;
                Ok(Reply::Done)
            }
            Command::AddJob { spec } => {
                non_empty("job name", &spec.name)?;
                non_empty("model", &spec.model)?;
                non_empty("inputs", &spec.inputs)?;
                if spec.batch_size == 0 {
                    return Err(Refusal::BatchSizeZero);
                }
                if self.jobs.contains_key(&spec.name) {
                    return Err(Refusal::JobExists { job: spec.name });
                }
                let name = spec.name.clone();
                self.jobs.insert(name, Job { spec, state: JobState::Added, progress: JobProgress::default() });
                Ok(Reply::Done)
            }
            Command::SetJobState { job, state } => {
                let j = self.job_mut(&job)?;
                if !allowed(j.state, state) {
                    return Err(Refusal::BadTransition { job, from: j.state, to: state });
                }
                j.state = state;
                Ok(Reply::Done)
            }
            Command::SetBatchSize { job, batch_size } => {
                if batch_size == 0 {
                    return Err(Refusal::BatchSizeZero);
                }
                self.job_mut(&job)?.spec.batch_size = batch_size;
                Ok(Reply::Done)
            }
            Command::RemoveJob { job } => {
                if self.job_mut(&job)?.state == JobState::Running {
                    return Err(Refusal::JobRunning { job });
                }
                self.jobs.remove(&job);
                self.assignments.remove(&job);
                Ok(Reply::Done)
            }
            Command::SetAssignments { assignments } => {
                if let Some(job) = assignments.keys().find(|j| !self.jobs.contains_key(*j)) {
                    return Err(Refusal::NoSuchJob { job: job.clone() });
                }
                for workers in assignments.values() {
                    distinct(workers)?;
                }
                self.assignments = assignments;
                Ok(Reply::Done)
            }
            Command::RecordProgress { job, queries, inputs } => {
                let p = &mut self.job_mut(&job)?.progress;
                p.queries_done += queries;
                p.inputs_done += inputs;
                Ok(Reply::Done)
            }
        }
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
            if j.spec.batch_size == 0 {
                return Err(format!("job {name}: batch size 0"));
            }
        }
        if let Some(j) = self.assignments.keys().find(|j| !self.jobs.contains_key(*j)) {
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
