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
    /// Virtual time: queries handed out, counted from the smallest count
    /// among the jobs running when this one joined. A free worker slot
    /// goes to the job with the smallest (fair queuing on query counts).
    vtime: u64,
    /// Processing time per query, moving average (µs).
    cost_us: Option<f64>,
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
    /// Accepted reports of the last [`SHARE_WINDOW_MS`]: (worker, job) →
    /// (when, processing time µs). What `explain` measures shares from.
    served: BTreeMap<(WorkerId, String), Vec<(u64, u64)>>,
}

/// The window over which workers' time shares are measured.
pub const SHARE_WINDOW_MS: u64 = 10_000;

impl Dispatcher {
    pub fn new(config: DispatcherConfig) -> Dispatcher {
        Dispatcher { config, jobs: BTreeMap::new(), served: BTreeMap::new() }
    }

    /// Follow the replicated state: jobs that stopped are dropped with
    /// their leases; committed work leaves the pending set.
    pub fn sync(&mut self, running: &[JobView]) {
        self.jobs.retain(|name, _| running.iter().any(|j| &j.name == name));
        for view in running {
            match self.jobs.get_mut(&view.name) {
                Some(q) => {
                    // Committed reports now show in `done`. So may work this
                    // dispatcher leased out: a leader that lost its place
                    // may still have counted it (its commit goes through
                    // the new leader). Such a lease is over; the worker's
                    // report will be a repeat.
                    let done = &view.done;
                    let overlaps = |s: u64, l: u64| done.iter().any(|&(ds, de)| ds < s + l && s < de);
                    q.pending.retain(|&s, &mut l| !overlaps(s, l));
                    q.leased.retain(|&s, lease| !overlaps(s, lease.len));
                    q.view = view.clone();
                }
                None => {
                    // A job that joins starts level with the least served
                    // one: no burst to "catch up" on the others.
                    let vtime = self.jobs.values().map(|q| q.vtime).min().unwrap_or(0);
                    let q = JobQueue {
                        view: view.clone(),
                        leased: BTreeMap::new(),
                        pending: BTreeMap::new(),
                        vtime,
                        cost_us: None,
                    };
                    self.jobs.insert(view.name.clone(), q);
                }
            }
        }
    }

    /// Which workers served each running job over the last
    /// [`SHARE_WINDOW_MS`], with the share of each one's busy time, the
    /// job's cost per query and the rate [`plan`] predicts for it. A job
    /// with no reports yet is listed with every live worker (any of them
    /// may take its next query).
    pub fn explain(&mut self, workers: &[WorkerId], slots: usize, now_ms: u64) -> BTreeMap<String, JobShare> {
        for v in self.served.values_mut() {
            v.retain(|(t, _)| t + SHARE_WINDOW_MS > now_ms);
        }
        self.served.retain(|(w, j), v| !v.is_empty() && workers.contains(w) && self.jobs.contains_key(j));
        let mut busy: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for ((w, _), v) in &self.served {
            *busy.entry(*w).or_default() += v.iter().map(|(_, l)| l).sum::<u64>();
        }
        let costs: Vec<(String, f64)> =
            self.jobs.iter().filter_map(|(n, q)| q.cost_us.map(|c| (n.clone(), c))).collect();
        let predicted = plan(&costs, workers.len() * slots.max(1));
        let mut out = BTreeMap::new();
        for (name, q) in &self.jobs {
            let mut shares: BTreeMap<WorkerId, f64> = BTreeMap::new();
            for ((w, j), v) in &self.served {
                if j == name {
                    let total = busy.get(w).copied().unwrap_or(0).max(1) as f64;
                    shares.insert(*w, v.iter().map(|(_, l)| *l).sum::<u64>() as f64 / total);
                }
            }
            if shares.is_empty() {
                shares = workers.iter().map(|w| (*w, 0.0)).collect();
            }
            let (predicted_rate, worker_share) =
                predicted.jobs.get(name).map_or((None, None), |p| (Some(p.rate), Some(p.workers)));
            out.insert(
                name.clone(),
                JobShare { cost_ms: q.cost_us.map(|c| c / 1000.0), shares, predicted_rate, worker_share },
            );
        }
        out
    }

    /// Up to `max` queries for `worker`, leased until `now_ms + lease_ms`.
    /// Each goes to the running job that has had the fewest queries handed
    /// out (its virtual time): query rates come out equal whatever each
    /// query costs, so a costlier job holds more of the workers' time.
    pub fn take(&mut self, worker: WorkerId, max: usize, now_ms: u64) -> Vec<Query> {
        let mut out = Vec::new();
        while out.len() < max {
            let pick = self
                .jobs
                .iter()
                .filter_map(|(name, q)| q.next_free().map(|free| (q.vtime, name.clone(), free)))
                .min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let Some((_, name, (start, len))) = pick else { break };
            let Some(q) = self.jobs.get_mut(&name) else { break };
            q.leased.insert(start, Lease { len, worker, deadline_ms: now_ms + self.config.lease_ms });
            q.vtime += 1;
            let pass = start / q.view.samples.max(1);
            out.push(Query { job: name, pass, start, len });
        }
        out
    }

    /// A worker finished `query`. Accepted once: then it waits for the
    /// commit as pending. A report from a worker whose lease was lost (it
    /// was thought dead, or the leader changed) is still accepted if the
    /// work is not done or held by someone else.
    pub fn report(&mut self, worker: WorkerId, query: &Query, latency_us: u64, now_ms: u64) -> Report {
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
        let l = latency_us as f64;
        q.cost_us = Some(q.cost_us.map_or(l, |c| 0.9 * c + 0.1 * l));
        let served = self.served.entry((worker, query.job.clone())).or_default();
        served.push((now_ms, latency_us));
        served.retain(|(t, _)| t + SHARE_WINDOW_MS > now_ms);
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

/// One job's part of the work, as [`Dispatcher::explain`] reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobShare {
    /// Processing time per query (moving average), if measured yet.
    pub cost_ms: Option<f64>,
    /// Worker → share of its busy time spent on this job (last 10 s).
    pub shares: BTreeMap<WorkerId, f64>,
    /// The query rate [`plan`] predicts (queries/s).
    pub predicted_rate: Option<f64>,
    /// How many workers' worth of time the job should take.
    pub worker_share: Option<f64>,
}

/// The fair split of `slots` worker slots between jobs of the given costs
/// (µs per query): every job gets the same query rate `r`, so job `j`
/// takes `r × cost_j` of the slots, and `r = slots / Σ cost`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The common query rate, queries/s.
    pub rate: f64,
    pub jobs: BTreeMap<String, PlannedJob>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedJob {
    pub rate: f64,
    /// Worker slots' worth of time (may be fractional: a slot's time can
    /// be split between jobs).
    pub workers: f64,
}

pub fn plan(costs: &[(String, f64)], slots: usize) -> Plan {
    let total_s: f64 = costs.iter().map(|(_, c)| c / 1e6).sum();
    if costs.is_empty() || total_s <= 0.0 {
        return Plan { rate: 0.0, jobs: BTreeMap::new() };
    }
    let rate = slots as f64 / total_s;
    let jobs = costs.iter().map(|(n, c)| (n.clone(), PlannedJob { rate, workers: rate * c / 1e6 })).collect();
    Plan { rate, jobs }
}
