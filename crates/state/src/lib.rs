//! The replicated state machine: everything the cluster must not forget,
//! changed only by [`Command`]s that went through the Raft log. Three
//! domains, each with its own data, commands, `apply` and invariants:
//!
//! - [`Namespace`] ([`FileCommand`]): the SDFS files and their versions;
//! - [`JobTable`] ([`JobCommand`]): inference jobs, their exactly-once
//!   progress, results and assignments;
//! - [`TrainingTable`] ([`TrainCommand`]): training jobs, their groups
//!   and reports;
//! - [`EventLog`] ([`EventCommand`]): the cluster's timeline, bounded;
//! - [`NodeTable`] ([`NodeCommand`]): nodes being drained;
//! - [`ServingTable`] ([`ServeCommand`]): models served online.
//!
//! [`ClusterState`] composes them and owns the rules that span domains:
//! job names are one namespace for both kinds of job, and stopping,
//! starting or removing a job goes to whichever kind holds the name; a
//! command that changes a job's state puts the change on the timeline.
//!
//! **Invariant:** plain data and pure functions. No I/O, no clock, no
//! randomness: every replica applies the same commands in the same order
//! and must reach the same state, refusals included. Time enters only as
//! the leader's timestamp inside a command.

use serde::{Deserialize, Serialize};

mod bounded;
mod encoding;
mod events;
mod files;
mod histogram;
mod job;
mod jobs;
mod nodes;
mod reply;
mod results;
mod serving;
mod training;
mod trainings;

pub use encoding::{FlatClusterState, JobTableV3, JobTableV5, JobTableV6, ServingTableV4};
pub use events::{
    EVENTS_KEPT, Event, EventCommand, EventKind, EventLog, MAX_DETAIL_BYTES, MAX_EVENTS_PER_COMMAND, NewEvent,
};
pub use files::{FileCommand, FileEntry, FileVersion, Files, Namespace};
pub use histogram::{Histogram, LatencySummary};
pub use job::{
    AssignmentNote, DoneQuery, FileRef, Job, JobProgress, JobSpec, JobState, OutputKind, RATE_WINDOW_MS, Shard,
    shard_pieces,
};
pub use jobs::{JobCommand, JobTable, Jobs};
pub use nodes::{Drain, MAX_DRAINING, NodeCommand, NodeTable};
pub use reply::{Applied, Refusal, Reply};
pub use results::{JobResults, ResultSegment, is_current, pass_done};
pub use serving::{
    DATATYPES, MAX_SERVE_BATCH, MAX_SERVE_DELAY_MS, MAX_SERVE_QUEUE, MAX_SERVED, MAX_WEIGHT, ServeCommand, ServeSpec,
    Served, ServingTable, TensorSpec,
};
pub use training::{EpochRecord, Regroup, Score, TrainGroup, TrainProgress, TrainReport, TrainSpec, Training};
pub use trainings::{TrainCommand, TrainingTable, Trainings};

/// How many versions of a file are kept unless a command says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 5;

/// The largest batch a job or a training may ask for: a query's inputs
/// and outputs travel in single messages, and a batch is held in memory
/// whole on a worker. A job may have a lower bound of its own
/// ([`JobSpec::max_batch`]).
pub const MAX_BATCH_SIZE: u32 = 65_536;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub namespace: Namespace,
    pub inference: JobTable,
    pub training: TrainingTable,
    #[serde(default)]
    pub events: EventLog,
    #[serde(default)]
    pub nodes: NodeTable,
    #[serde(default)]
    pub serving: ServingTable,
}

/// A change to the state: a command of one domain. On the wire (the log,
/// `coord apply`) it is that command's flat JSON, `{"op": …, …}`; the op
/// says which domain it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    Files(FileCommand),
    Jobs(JobCommand),
    Training(TrainCommand),
    Events(EventCommand),
    Nodes(NodeCommand),
    Serving(ServeCommand),
}

impl From<FileCommand> for Command {
    fn from(c: FileCommand) -> Self {
        Command::Files(c)
    }
}

impl From<JobCommand> for Command {
    fn from(c: JobCommand) -> Self {
        Command::Jobs(c)
    }
}

impl From<TrainCommand> for Command {
    fn from(c: TrainCommand) -> Self {
        Command::Training(c)
    }
}

impl From<NodeCommand> for Command {
    fn from(c: NodeCommand) -> Self {
        Command::Nodes(c)
    }
}

impl From<ServeCommand> for Command {
    fn from(c: ServeCommand) -> Self {
        Command::Serving(c)
    }
}

impl From<EventCommand> for Command {
    fn from(c: EventCommand) -> Self {
        Command::Events(c)
    }
}

impl Command {
    /// The job whose state this command may change, and the time the
    /// command carries (`None` if it carries none).
    fn job_change(&self) -> Option<(&str, u64)> {
        match self {
            Command::Jobs(JobCommand::SetJobState { job, now_ms, .. })
            | Command::Jobs(JobCommand::CompleteQueries { job, now_ms, .. })
            | Command::Jobs(JobCommand::FailJob { job, now_ms, .. })
            | Command::Training(TrainCommand::ReportTraining { job, now_ms, .. })
            | Command::Training(TrainCommand::FailTraining { job, now_ms, .. }) => Some((job, *now_ms)),
            Command::Training(TrainCommand::AddTraining { spec, now_ms }) => Some((&spec.name, *now_ms)),
            _ => None,
        }
    }
}

impl ClusterState {
    /// Apply one command: either the state changes and a reply says how, or
    /// a refusal says why not and the state is exactly as before. A job
    /// whose state the command changed gets an event on the timeline.
    pub fn apply(&mut self, cmd: impl Into<Command>) -> Applied {
        let cmd = cmd.into();
        let watched = cmd.job_change().map(|(job, at)| (job.to_string(), at, self.job_state(job)));
        let applied = self.apply_command(cmd);
        if applied.is_ok()
            && let Some((job, at_ms, before)) = watched
        {
            let after = self.job_state(&job);
            if after != before
                && let Some(after) = after
            {
                let at_ms = if at_ms == 0 { self.events.last_ms() } else { at_ms };
                let event = self.job_event(job, after, at_ms);
                self.events.push(event);
            }
        }
        applied
    }

    /// A job's state, of either kind.
    pub fn job_state(&self, job: &str) -> Option<JobState> {
        match self.inference.jobs.get(job) {
            Some(j) => Some(j.state),
            None => self.training.jobs.get(job).map(|t| t.state),
        }
    }

    fn job_event(&self, job: String, state: JobState, at_ms: u64) -> NewEvent {
        let (kind, verb) = match state {
            JobState::Added => (EventKind::JobAdded, "added"),
            JobState::Running => (EventKind::JobStarted, "started"),
            JobState::Stopped => (EventKind::JobStopped, "stopped"),
            JobState::Done => (EventKind::JobDone, "done"),
            JobState::Failed => (EventKind::JobFailed, "failed"),
        };
        let error = match (self.inference.jobs.get(&job), self.training.jobs.get(&job)) {
            (Some(j), _) => j.progress.error.clone(),
            (None, Some(t)) => t.progress.error.clone(),
            (None, None) => None,
        };
        let detail = match error {
            Some(e) if state == JobState::Failed => format!("job {job} failed: {e}"),
            _ => format!("job {job} {verb}"),
        };
        let mut detail = detail;
        truncate(&mut detail, MAX_DETAIL_BYTES);
        NewEvent {
            at_ms,
            kind,
            node: 0,
            key: format!("state/{}", self.events.next_seq.max(1)),
            job: Some(job),
            detail,
            by: 0,
        }
    }

    fn apply_command(&mut self, cmd: Command) -> Applied {
        match cmd {
            Command::Events(c) => self.events.apply(c),
            Command::Nodes(c) => {
                let drained = match &c {
                    NodeCommand::DrainNode { node, now_ms, .. } if !self.nodes.is_draining(*node) => {
                        Some((*node, *now_ms))
                    }
                    _ => None,
                };
                let applied = self.nodes.apply(c)?;
                if let Some((node, at_ms)) = drained {
                    self.events.push(NewEvent {
                        at_ms,
                        kind: EventKind::NodeDraining,
                        node,
                        key: format!("drain/{node}/{at_ms}"),
                        job: None,
                        detail: format!(
                            "node {node} is draining: it takes no more work and stops once nothing needs it"
                        ),
                        by: 0,
                    });
                }
                Ok(applied)
            }
            Command::Files(c) => self.namespace.apply(c),
            Command::Serving(c) => self.serving.apply(c),
            Command::Jobs(c) => self.apply_job(c),
            Command::Training(c) => {
                if let TrainCommand::AddTraining { spec, .. } = &c
                    && self.inference.jobs.contains_key(&spec.name)
                {
                    return Err(Refusal::JobExists { job: spec.name.clone() });
                }
                self.training.apply(c)
            }
        }
    }

    /// A job command, sent to the training table when it names a
    /// training job and is one that applies to both kinds.
    fn apply_job(&mut self, c: JobCommand) -> Applied {
        let named = match &c {
            JobCommand::AddJob { spec } => Some(&spec.name),
            JobCommand::SetJobState { job, .. }
            | JobCommand::RemoveJob { job }
            | JobCommand::SetBatchSize { job, .. } => Some(job),
            _ => None,
        };
        if !named.is_some_and(|n| self.training.jobs.contains_key(n)) {
            return self.inference.apply(c);
        }
        match c {
            JobCommand::SetJobState { job, state, .. } => self.training.set_state(job, state),
            JobCommand::RemoveJob { job } => self.training.remove(job),
            JobCommand::SetBatchSize { job, .. } => {
                Err(Refusal::BadTraining(format!("{job} is a training job: its batch size is fixed when it is added")))
            }
            JobCommand::AddJob { spec } => Err(Refusal::JobExists { job: spec.name }),
            c => self.inference.apply(c),
        }
    }

    /// The invariants every reachable state keeps; tests check them after
    /// every command.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.namespace.check()?;
        self.inference.check()?;
        self.training.check()?;
        self.events.check()?;
        self.nodes.check()?;
        self.serving.check()?;
        if let Some(name) = self.training.jobs.keys().find(|n| self.inference.jobs.contains_key(*n)) {
            return Err(format!("{name} is both an inference and a training job"));
        }
        Ok(())
    }
}

/// Cut `s` to at most `max` bytes, at a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

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
