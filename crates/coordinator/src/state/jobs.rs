//! The inference jobs' commands: the job table, its life cycle, batch
//! sizes, and the counting of finished queries (exactly once).

use super::{
    Applied, ClusterState, DoneQuery, Job, JobProgress, JobResults, JobSpec, JobState, RATE_SLOT_MS, RATE_WINDOW_MS,
    Refusal, Reply, ResultSegment, allowed, is_permutation, non_empty,
};

impl ClusterState {
    pub(super) fn add_job(&mut self, spec: JobSpec) -> Applied {
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
        if self.jobs.contains_key(&spec.name) || self.trainings.contains_key(&spec.name) {
            return Err(Refusal::JobExists { job: spec.name });
        }
        let name = spec.name.clone();
        let job =
            Job { spec, state: JobState::Added, progress: JobProgress::default(), results: JobResults::default() };
        self.jobs.insert(name, job);
        Ok(Reply::Done)
    }

    pub(super) fn set_job_state(&mut self, job: String, state: JobState, now_ms: u64) -> Applied {
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

    pub(super) fn set_batch_size(&mut self, job: String, batch_size: u32) -> Applied {
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

    pub(super) fn remove_job(&mut self, job: String) -> Applied {
        if self.job_mut(&job)?.state == JobState::Running {
            return Err(Refusal::JobRunning { job });
        }
        self.jobs.remove(&job);
        self.assignments.remove(&job);
        self.assignment_notes.remove(&job);
        Ok(Reply::Done)
    }

    pub(super) fn complete_queries(
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
}
