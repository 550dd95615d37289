//! The inference jobs: the job table, its life cycle, batch sizes, the
//! counting of finished queries (exactly once), where their results are,
//! and which workers serve them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::RATE_SLOT_MS;
use crate::{
    Applied, AssignmentNote, DoneQuery, FileRef, Job, JobProgress, JobResults, JobSpec, JobState, RATE_WINDOW_MS,
    Refusal, Reply, ResultSegment, allowed, distinct, is_permutation, non_empty,
};

/// Job name → job. Persistent, so a commit that changes one job copies
/// that job, not the table.
pub type Jobs = imbl::OrdMap<String, Job>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTable {
    /// Job name → definition, state and progress.
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub jobs: Jobs,
    /// Which workers serve which job (the scheduler's last decision).
    pub assignments: BTreeMap<String, Vec<u64>>,
    /// Why: the measurements behind `assignments`, per job.
    #[serde(default)]
    pub assignment_notes: BTreeMap<String, AssignmentNote>,
}

/// A change to the inference jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JobCommand {
    AddJob {
        spec: JobSpec,
    },
    /// Also stops, starts and fails training jobs: the cluster state
    /// sends it there when the name is a training's.
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
    /// Also removes a training job (as `SetJobState`).
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
    /// An inference job cannot go on: its queries fail (its error is
    /// shown by `job status`).
    FailJob {
        job: String,
        error: String,
        /// The proposer's clock (the time on the timeline).
        #[serde(default)]
        now_ms: u64,
    },
}

impl JobCommand {
    /// Every op of this domain, as the wire names it.
    pub const OPS: &[&str] = &[
        "add_job",
        "set_job_state",
        "set_batch_size",
        "remove_job",
        "set_assignments",
        "complete_queries",
        "drop_results",
        "compact_results",
        "record_progress",
        "fail_job",
    ];
}

impl JobTable {
    pub fn apply(&mut self, cmd: JobCommand) -> Applied {
        match cmd {
            JobCommand::AddJob { spec } => self.add_job(spec),
            JobCommand::SetJobState { job, state, now_ms } => self.set_job_state(job, state, now_ms),
            JobCommand::SetBatchSize { job, batch_size } => self.set_batch_size(job, batch_size),
            JobCommand::RemoveJob { job } => self.remove_job(job),
            JobCommand::SetAssignments { assignments, notes } => {
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
            JobCommand::CompleteQueries { job, expect_done, queries, now_ms, segment } => {
                self.complete_queries(job, expect_done, queries, now_ms, segment)
            }
            JobCommand::DropResults { job, files } => {
                self.job_mut(&job)?.drop_segments(&files);
                Ok(Reply::Done)
            }
            JobCommand::CompactResults { job, expect_base, base, segments } => {
                self.job_mut(&job)?.compact(expect_base, base, &segments)?;
                Ok(Reply::Done)
            }
            JobCommand::RecordProgress { job, queries, inputs } => {
                let p = &mut self.job_mut(&job)?.progress;
                p.queries_done = p.queries_done.saturating_add(queries);
                p.inputs_done = p.inputs_done.saturating_add(inputs);
                Ok(Reply::Done)
            }
            JobCommand::FailJob { job, error, .. } => {
                let j = self.job_mut(&job)?;
                if j.state != JobState::Running {
                    return Err(Refusal::JobNotRunning { job });
                }
                j.state = JobState::Failed;
                j.progress.error = Some(error);
                Ok(Reply::Done)
            }
        }
    }

    fn job_mut(&mut self, job: &str) -> Result<&mut Job, Refusal> {
        self.jobs.get_mut(job).ok_or_else(|| Refusal::NoSuchJob { job: job.to_string() })
    }

    fn add_job(&mut self, spec: JobSpec) -> Applied {
        non_empty("job name", &spec.name)?;
        non_empty("model", &spec.model)?;
        non_empty("inputs", &spec.inputs)?;
        if spec.batch_size == 0 {
            return Err(Refusal::BatchSizeZero);
        }
        if spec.batch_size > spec.batch_limit() {
            return Err(Refusal::BatchSizeTooLarge { batch_size: spec.batch_size, max: spec.batch_limit() });
        }
        if !is_permutation(&spec.transpose) {
            return Err(Refusal::BadTranspose { transpose: spec.transpose });
        }
        if self.jobs.contains_key(&spec.name) {
            return Err(Refusal::JobExists { job: spec.name });
        }
        let name = spec.name.clone();
        let job =
            Job { spec, state: JobState::Added, progress: JobProgress::default(), results: JobResults::default() };
        self.jobs.insert(name, job);
        Ok(Reply::Done)
    }

    fn set_job_state(&mut self, job: String, state: JobState, now_ms: u64) -> Applied {
        let j = self.job_mut(&job)?;
        if !allowed(j.state, state) {
            return Err(Refusal::BadTransition { job, from: j.state, to: state });
        }
        if state == JobState::Running {
            // A finished job runs again from its first pass.
            if j.state == JobState::Done {
                j.progress.pass = 0;
                j.progress.done.clear();
                // Its rows would be taken for the new run's.
                j.results = JobResults::default();
            }
            j.progress.started_at_ms = now_ms;
            j.progress.recent.clear();
            j.progress.error = None;
        }
        j.state = state;
        Ok(Reply::Done)
    }

    fn set_batch_size(&mut self, job: String, batch_size: u32) -> Applied {
        if batch_size == 0 {
            return Err(Refusal::BatchSizeZero);
        }
        let spec = &mut self.job_mut(&job)?.spec;
        if batch_size > spec.batch_limit() {
            return Err(Refusal::BatchSizeTooLarge { batch_size, max: spec.batch_limit() });
        }
        spec.batch_size = batch_size;
        Ok(Reply::Done)
    }

    fn remove_job(&mut self, job: String) -> Applied {
        if self.job_mut(&job)?.state == JobState::Running {
            return Err(Refusal::JobRunning { job });
        }
        self.jobs.remove(&job);
        self.assignments.remove(&job);
        self.assignment_notes.remove(&job);
        Ok(Reply::Done)
    }

    fn complete_queries(
        &mut self,
        job: String,
        expect_done: u64,
        queries: Vec<DoneQuery>,
        now_ms: u64,
        segment: Option<ResultSegment>,
    ) -> Applied {
        let j = self.job_mut(&job)?;
        if j.state != JobState::Running {
            return Err(Refusal::JobNotRunning { job });
        }
        let p = &j.progress;
        if p.queries_done != expect_done {
            return Err(Refusal::StaleCount { job, expected: expect_done, actual: p.queries_done });
        }
        if let Some(s) = &segment {
            let rows = queries.iter().fold(0u64, |n, q| n.saturating_add(q.len));
            j.check_segment(s, expect_done + 1, queries.len() as u64, rows)?;
        }
        // Check every query against the done set (and each other)
        // before changing anything.
        let samples = j.spec.samples.max(1);
        let end = j.spec.passes.map_or(u64::MAX, |n| n.saturating_mul(samples));
        let mut check = p.clone();
        for q in &queries {
            let last = q.start.saturating_add(q.len);
            let spans_passes = q.len == 0 || q.start / samples != (last - 1) / samples;
            if spans_passes || last > end || check.overlaps_done(q.start, q.len) {
                return Err(Refusal::RepeatedQuery { job, start: q.start, len: q.len });
            }
            check.mark_done(q.start, q.len);
        }
        let p = &mut j.progress;
        for q in &queries {
            p.mark_done(q.start, q.len);
            p.queries_done += 1;
            p.inputs_done += q.len;
            // A query's own counts are at most its inputs.
            let labeled = q.labeled.min(q.len);
            p.labeled += labeled;
            p.correct += q.correct.min(labeled);
            let scored = q.loss_count.min(labeled);
            p.loss_count += scored;
            p.loss_micro = p.loss_micro.saturating_add(if scored > 0 { q.loss_micro } else { 0 });
            p.latency.record(q.latency_us);
        }
        let slot = now_ms / RATE_SLOT_MS;
        *p.recent.entry(slot).or_default() += queries.len() as u64;
        let oldest = now_ms.saturating_sub(RATE_WINDOW_MS) / RATE_SLOT_MS;
        p.recent.retain(|s, _| *s > oldest);
        let prefix = p.done.first().filter(|(s, _)| *s == 0).map_or(0, |(_, e)| *e);
        p.pass = prefix / samples;
        let finished = prefix >= end;
        if let Some(s) = segment {
            j.results.segments.push_back(s);
        }
        if finished {
            j.state = JobState::Done;
        }
        Ok(Reply::Completed { first_query: expect_done + 1, finished })
    }

    /// The invariants every reachable job table keeps.
    pub fn check(&self) -> Result<(), String> {
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
            if p.correct > p.labeled || p.loss_count > p.labeled || p.latency.count > p.queries_done {
                return Err(format!("job {name}: counts disagree"));
            }
            let segs = &j.results.segments;
            let ordered = segs.iter().zip(segs.iter().skip(1)).all(|(a, b)| a.first_query + a.queries <= b.first_query);
            if !ordered || segs.last().is_some_and(|s| s.first_query + s.queries > p.queries_done + 1) {
                return Err(format!("job {name}: result segments out of order or beyond the count"));
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
