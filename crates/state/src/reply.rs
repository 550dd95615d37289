//! What an applied command answers: a reply, or a refusal that changed
//! nothing. One type for every domain: the answer is replicated through
//! the log as it is, and several domains refuse for the same reasons
//! (an unknown job, a bad batch size).

use serde::{Deserialize, Serialize};

use crate::JobState;

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

    // The namespace.
    #[error("no such file: {name}")]
    NoSuchFile { name: String },
    #[error("file {name} has no version {version}")]
    NoSuchVersion { name: String, version: u64 },
    #[error("replica list {replicas:?} names a node twice")]
    DuplicateReplica { replicas: Vec<u64> },
    #[error("keep must be at least 1")]
    KeepZero,
    // Jobs of both kinds.
    #[error("job {job} already exists")]
    JobExists { job: String },
    #[error("no such job: {job}")]
    NoSuchJob { job: String },
    #[error("batch size must be at least 1")]
    BatchSizeZero,
    #[error("batch size {batch_size} is too large: at most {max} (a query's outputs must fit in one message)")]
    BatchSizeTooLarge { batch_size: u32, max: u32 },
    #[error("job {job} is {from:?} and cannot become {to:?}")]
    BadTransition { job: String, from: JobState, to: JobState },
    #[error("job {job} is running: stop it first")]
    JobRunning { job: String },
    #[error("job {job} is not running")]
    JobNotRunning { job: String },
    // Inference jobs.
    #[error("transpose {transpose:?} is not an order of axes 0, 1, …")]
    BadTranspose { transpose: Vec<u32> },
    #[error("job {job} has {actual} queries done, not {expected}: a newer count exists")]
    StaleCount { job: String, expected: u64, actual: u64 },
    #[error("job {job}: query at position {start} (+{len}) repeats finished work or is outside the job's passes")]
    RepeatedQuery { job: String, start: u64, len: u64 },
    #[error("results of job {job}: {reason}")]
    BadResults { job: String, reason: String },
    // Training jobs.
    #[error("training job {job} is at generation {current}; generation {given} is not the {wanted}")]
    StaleGeneration { job: String, current: u64, given: u64, wanted: String },
    #[error("training job {job} has {current} steps done; a report of {given} is behind or beyond its {total}")]
    BadStep { job: String, current: u64, given: u64, total: u64 },
    #[error("{0}")]
    BadTraining(String),
    // The timeline.
    #[error("{0}")]
    BadEvent(String),
    // Draining nodes.
    #[error("{0}")]
    BadNode(String),
    // Served models.
    #[error("a model named {name} is served already")]
    ServedExists { name: String },
    #[error("no served model named {name}")]
    NoSuchServed { name: String },
    #[error("{0}")]
    BadServe(String),
}

/// The outcome replicated to the client: a refusal is an answer, not a
/// failure of the log.
pub type Applied = Result<Reply, Refusal>;
