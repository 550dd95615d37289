//! The dashboard's recent past: once a second, each running job's rate,
//! latency percentiles over the last 10 s, and accuracy, and each
//! training's step, loss and accuracy, as this node's copy of the state
//! shows them. Bounded ([`KEPT`] samples), per node, in memory: a page
//! opened late still shows the last quarter of an hour, and the marks of
//! the timeline (which is replicated and longer) fall on it.

use std::collections::{BTreeMap, VecDeque};

use idunno_state::{ClusterState, Histogram, JobState};
use serde::Serialize;

/// Samples kept: 15 minutes at one a second.
pub const KEPT: usize = 900;
/// Latency percentiles are over this many of the last samples (10 s).
const LATENCY_WINDOW: usize = 10;

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub jobs: BTreeMap<String, JobSample>,
    pub trainings: BTreeMap<String, TrainSample>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSample {
    /// Queries per second over the last 10 s (C1).
    pub rate: f64,
    /// Latency percentiles of the queries counted in the last 10 s, in
    /// milliseconds (`None`: no query in that time).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub accuracy: Option<f64>,
    pub queries: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSample {
    pub step: u64,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub generation: u64,
}

#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
    /// The running jobs' latency histograms at the last samples, oldest
    /// first, to take the last 10 s out of their running totals.
    latencies: VecDeque<BTreeMap<String, Histogram>>,
}

impl History {
    /// Take a sample of `state` at `now_ms`.
    pub fn sample(&mut self, now_ms: u64, state: &ClusterState) {
        let mut jobs = BTreeMap::new();
        let mut latencies = BTreeMap::new();
        for (name, job) in state.inference.jobs.iter().filter(|(_, j)| j.state == JobState::Running) {
            let p = &job.progress;
            let total = &p.latency;
            let recent = match self.latencies.front().and_then(|h| h.get(name)) {
                Some(old) => total.since(old),
                None => total.clone(),
            };
            let ms = |q: f64| (recent.count > 0).then(|| recent.quantile(q) as f64 / 1000.0);
            jobs.insert(
                name.clone(),
                JobSample {
                    rate: p.query_rate(now_ms),
                    p50_ms: ms(0.5),
                    p95_ms: ms(0.95),
                    p99_ms: ms(0.99),
                    accuracy: (p.labeled > 0).then(|| p.correct as f64 / p.labeled as f64),
                    queries: p.queries_done,
                },
            );
            latencies.insert(name.clone(), total.clone());
        }
        let mut trainings = BTreeMap::new();
        for (name, t) in state.training.jobs.iter().filter(|(_, t)| t.state == JobState::Running) {
            let score = t.current_score();
            let sample = TrainSample {
                step: t.progress.step,
                loss: score.loss(),
                accuracy: score.accuracy(),
                generation: t.group.generation,
            };
            trainings.insert(name.clone(), sample);
        }
        self.latencies.push_back(latencies);
        while self.latencies.len() > LATENCY_WINDOW {
            self.latencies.pop_front();
        }
        self.samples.push_back(Sample { at_ms: now_ms, jobs, trainings });
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// Samples taken after `after_ms`, oldest first.
    pub fn after(&self, after_ms: u64) -> Vec<Sample> {
        let from = self.samples.partition_point(|s| s.at_ms <= after_ms);
        self.samples.range(from..).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_state::{DoneQuery, JobCommand, JobSpec};

    fn done(st: &mut ClusterState, expect: u64, latency_us: u64, now_ms: u64) {
        let q = DoneQuery { start: expect, len: 1, latency_us, labeled: 1, correct: 1, loss_count: 0, loss_micro: 0 };
        let cmd = JobCommand::CompleteQueries {
            job: "j".into(),
            expect_done: expect,
            queries: vec![q],
            now_ms,
            segment: None,
        };
        st.apply(cmd).unwrap();
    }

    #[test]
    fn percentiles_cover_the_last_ten_samples_and_the_history_is_bounded() {
        let mut st = ClusterState::default();
        let spec = JobSpec {
            name: "j".into(),
            model: "m".into(),
            inputs: "x".into(),
            batch_size: 1,
            samples: 1_000_000,
            ..Default::default()
        };
        st.apply(JobCommand::AddJob { spec }).unwrap();
        st.apply(JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 1000 }).unwrap();
        let mut h = History::default();
        // Slow queries first, then fast ones only.
        let mut n = 0;
        for second in 0..30u64 {
            let us = if second < 5 { 500_000 } else { 1_000 };
            done(&mut st, n, us, 1000 + second * 1000);
            n += 1;
            h.sample(1000 + second * 1000, &st);
        }
        let last = h.after(0).pop().unwrap();
        let j = &last.jobs["j"];
        let p99 = j.p99_ms.unwrap();
        assert!(p99 < 2.0, "the slow queries are out of the window: p99 {p99} ms");
        assert_eq!((j.queries, j.accuracy), (30, Some(1.0)));
        assert_eq!(h.after(1000 + 28 * 1000).len(), 1);
        for s in 0..(KEPT as u64 + 10) {
            h.sample(100_000 + s, &st);
        }
        assert_eq!(h.after(0).len(), KEPT);
    }
}
