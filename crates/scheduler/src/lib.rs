//! The query dispatcher, sans-IO: which queries exist, which worker holds
//! which one (a lease), what goes back to the queue when a worker dies or
//! a lease runs out, and which workers serve which job.
//!
//! Events in: the running jobs as the replicated state has them
//! ([`Dispatcher::sync`]), a worker asking for work ([`Dispatcher::take`]),
//! a worker reporting a finished query ([`Dispatcher::report`]), a
//! completion committed or abandoned, a worker gone, the clock
//! ([`Dispatcher::expire`]). Effects out: queries to hand out, reports
//! accepted (to commit) or dropped as repeats, an assignment table.
//!
//! **Invariant:** no I/O, no clock, no randomness: `now_ms` is an input.
//! The dispatcher's state is soft: a new leader rebuilds it from the
//! replicated done-ranges, so nothing here needs to survive a crash.
//! **Invariant:** an input range is at most once in `leased ∪ pending`,
//! and never overlaps what the replicated state has done.

use std::collections::BTreeMap;

use serde::Serialize;

pub type WorkerId = u64;

/// A running job as the replicated state describes it. Work is counted
/// in positions of the job's input stream: position `k` is input
/// `k % samples` of pass `k / samples`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub name: String,
    pub samples: u64,
    /// None: the job loops until stopped.
    pub passes: Option<u64>,
    pub batch_size: u32,
    /// Positions done (sorted, disjoint ranges `[start, end)`).
    pub done: Vec<(u64, u64)>,
}

impl JobView {
    fn end(&self) -> u64 {
        self.passes.map_or(u64::MAX, |n| n.saturating_mul(self.samples.max(1)))
    }
}

/// One batch of consecutive inputs of one pass of a job: positions
/// `start .. start + len` of its input stream, all in pass `pass`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Query {
    pub job: String,
    pub pass: u64,
    pub start: u64,
    pub len: u64,
}

impl Query {
    /// The first input's index in the input set.
    pub fn first_input(&self, samples: u64) -> u64 {
        self.start - self.pass * samples
    }
}

#[derive(Clone, Debug)]
struct Lease {
    len: u64,
    worker: WorkerId,
    deadline_ms: u64,
}

#[derive(Clone, Debug)]
struct JobQueue {
    view: JobView,
    /// Handed out, not reported: start → lease.
    leased: BTreeMap<u64, Lease>,
    /// Reported, waiting for the commit: start → len.
    pending: BTreeMap<u64, u64>,
}

impl JobQueue {
    fn busy(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        let overlaps = |s: u64, l: u64| s < end && start < s + l;
        self.view.done.iter().any(|&(s, e)| s < end && start < e)
            || self.leased.iter().any(|(&s, l)| overlaps(s, l.len))
            || self.pending.iter().any(|(&s, &l)| overlaps(s, l))
    }

    /// The first range of up to `batch_size` positions that nobody has
    /// done, holds or reported, within one pass and the job's passes.
    fn next_free(&self) -> Option<(u64, u64)> {
        let mut taken: Vec<(u64, u64)> = self.view.done.clone();
        taken.extend(self.leased.iter().map(|(&s, l)| (s, s + l.len)));
        taken.extend(self.pending.iter().map(|(&s, &l)| (s, s + l)));
        taken.sort_unstable();
        let mut cursor = 0;
        for (s, e) in taken {
            if s > cursor {
                break;
            }
            cursor = cursor.max(e);
        }
        let samples = self.view.samples.max(1);
        let end = self.view.end();
        if cursor >= end {
            return None;
        }
        let next_taken = self.first_taken_after(cursor).unwrap_or(u64::MAX);
        let pass_end = (cursor / samples + 1) * samples;
        let len = (self.view.batch_size as u64).min(next_taken - cursor).min(pass_end - cursor).min(end - cursor);
        Some((cursor, len))
    }

    fn first_taken_after(&self, at: u64) -> Option<u64> {
        let done = self.view.done.iter().map(|&(s, _)| s);
        let leased = self.leased.keys().copied();
        let pending = self.pending.keys().copied();
        done.chain(leased).chain(pending).filter(|&s| s > at).min()
    }
}

/// What became of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// New work: commit it.
    Accepted,
    /// Already done, reported or held by another live lease, or of a job
    /// or pass that is over: drop it (it was a re-execution).
    Repeat,
}

#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// How long a worker may hold a query before it goes back to the
    /// queue even if the worker still looks alive.
    pub lease_ms: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig { lease_ms: 30_000 }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Dispatcher {
    config: DispatcherConfig,
    jobs: BTreeMap<String, JobQueue>,
    /// Which job each worker served last (round-robin between its jobs).
    last: BTreeMap<WorkerId, String>,
}

impl Dispatcher {
    pub fn new(config: DispatcherConfig) -> Dispatcher {
        Dispatcher { config, jobs: BTreeMap::new(), last: BTreeMap::new() }
    }

    /// Follow the replicated state: jobs that stopped are dropped with
    /// their leases; committed work leaves the pending set.
    pub fn sync(&mut self, running: &[JobView]) {
        self.jobs.retain(|name, _| running.iter().any(|j| &j.name == name));
        for view in running {
            match self.jobs.get_mut(&view.name) {
                Some(q) => {
                    // Committed reports now show in `done`.
                    let done = view.done.clone();
                    q.pending.retain(|&s, &mut l| !done.iter().any(|&(ds, de)| ds <= s && s + l <= de));
                    q.view = view.clone();
                }
                None => {
                    let q = JobQueue { view: view.clone(), leased: BTreeMap::new(), pending: BTreeMap::new() };
                    self.jobs.insert(view.name.clone(), q);
                }
            }
        }
    }

    /// The jobs each worker serves. For now every live worker serves every
    /// running job; fair shares come with the fair-time scheduler.
    pub fn assignments(&self, workers: &[WorkerId]) -> BTreeMap<String, Vec<WorkerId>> {
        let mut ws = workers.to_vec();
        ws.sort_unstable();
        ws.dedup();
        self.jobs.keys().map(|j| (j.clone(), ws.clone())).collect()
    }

    /// Up to `max` queries for `worker`, leased until `now_ms + lease_ms`,
    /// taken in turn from the jobs it serves.
    pub fn take(&mut self, worker: WorkerId, max: usize, now_ms: u64) -> Vec<Query> {
        let mut out = Vec::new();
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        if names.is_empty() {
            return out;
        }
        let mut idle_rounds = 0;
        while out.len() < max && idle_rounds < names.len() {
            // The job after the one this worker served last.
            let after = self.last.get(&worker);
            let i = match after.and_then(|a| names.iter().position(|n| n == a)) {
                Some(i) => (i + 1) % names.len(),
                None => 0,
            };
            let name = &names[i];
            self.last.insert(worker, name.clone());
            let Some(q) = self.jobs.get_mut(name) else { continue };
            match q.next_free() {
                Some((start, len)) => {
                    q.leased.insert(start, Lease { len, worker, deadline_ms: now_ms + self.config.lease_ms });
                    let pass = start / q.view.samples.max(1);
                    out.push(Query { job: name.clone(), pass, start, len });
                    idle_rounds = 0;
                }
                None => idle_rounds += 1,
            }
        }
        out
    }

    /// A worker finished `query`. Accepted once: then it waits for the
    /// commit as pending. A report from a worker whose lease was lost (it
    /// was thought dead, or the leader changed) is still accepted if the
    /// work is not done or held by someone else.
    pub fn report(&mut self, worker: WorkerId, query: &Query) -> Report {
        let Some(q) = self.jobs.get_mut(&query.job) else { return Report::Repeat };
        let samples = q.view.samples.max(1);
        let last = query.start.saturating_add(query.len);
        if query.len == 0 || last > q.view.end() || query.start / samples != (last - 1) / samples {
            return Report::Repeat;
        }
        let own = q.leased.get(&query.start).is_some_and(|l| l.worker == worker && l.len == query.len);
        if own {
            q.leased.remove(&query.start);
        }
        if q.busy(query.start, query.len) {
            return Report::Repeat;
        }
        q.pending.insert(query.start, query.len);
        Report::Accepted
    }

    /// The commit of these accepted reports failed: they go back to the
    /// queue (the worker's result is dropped; another run will redo it).
    pub fn abandon(&mut self, queries: &[Query]) {
        for query in queries {
            if let Some(q) = self.jobs.get_mut(&query.job)
                && q.pending.get(&query.start) == Some(&query.len)
            {
                q.pending.remove(&query.start);
            }
        }
    }

    /// `worker` gave `query` back without running it (it failed there).
    pub fn release(&mut self, worker: WorkerId, query: &Query) {
        if let Some(q) = self.jobs.get_mut(&query.job)
            && q.leased.get(&query.start).is_some_and(|l| l.worker == worker && l.len == query.len)
        {
            q.leased.remove(&query.start);
        }
    }

    /// `worker` is dead or left: its queries go back to the queue.
    pub fn worker_gone(&mut self, worker: WorkerId) -> usize {
        let mut n = 0;
        for q in self.jobs.values_mut() {
            let before = q.leased.len();
            q.leased.retain(|_, l| l.worker != worker);
            n += before - q.leased.len();
        }
        self.last.remove(&worker);
        n
    }

    /// Leases past their deadline go back to the queue.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        for q in self.jobs.values_mut() {
            let before = q.leased.len();
            q.leased.retain(|_, l| l.deadline_ms > now_ms);
            n += before - q.leased.len();
        }
        n
    }

    /// Queries handed out and not yet reported, per worker.
    pub fn leases(&self) -> BTreeMap<WorkerId, usize> {
        let mut m = BTreeMap::new();
        for q in self.jobs.values() {
            for l in q.leased.values() {
                *m.entry(l.worker).or_default() += 1;
            }
        }
        m
    }

    /// Check the invariants (tests call this after every event).
    pub fn check(&self) -> Result<(), String> {
        for (name, q) in &self.jobs {
            let mut ranges: Vec<(u64, u64)> = q.view.done.clone();
            ranges.extend(q.leased.iter().map(|(&s, l)| (s, s + l.len)));
            ranges.extend(q.pending.iter().map(|(&s, &l)| (s, s + l)));
            ranges.sort_unstable();
            if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
                return Err(format!("job {name}: overlapping work {ranges:?}"));
            }
            if ranges.last().is_some_and(|&(_, e)| e > q.view.end()) {
                return Err(format!("job {name}: work beyond the job's passes"));
            }
        }
        Ok(())
    }
}
