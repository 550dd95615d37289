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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

pub mod fair;
pub mod place;

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
    /// Every position below this one is done, leased or pending: where
    /// the search for free work starts (so handing out a query costs
    /// O(log n), not a walk over everything held).
    free_from: u64,
    /// Where each worker's run goes on: the position after the last
    /// query it was handed here (see [`JobQueue::next_free_for`]).
    runs: BTreeMap<WorkerId, u64>,
}

/// Queries a worker's run may take before another worker starts one of
/// its own: what a run of one worker covers ahead of it.
pub const RUN_QUERIES: u64 = 64;

/// The end of the range of `ranges` (start → length) that holds `pos`,
/// if one does. The ranges are disjoint.
fn covering(ranges: &BTreeMap<u64, u64>, pos: u64) -> Option<u64> {
    ranges.range(..=pos).next_back().map(|(&s, &l)| s + l).filter(|&e| e > pos)
}

/// Whether any of the disjoint `ranges` (start → length) overlaps
/// `[start, end)`.
fn overlaps(ranges: &BTreeMap<u64, u64>, start: u64, end: u64) -> bool {
    ranges.range(..end).next_back().is_some_and(|(&s, &l)| s + l > start)
}

impl JobQueue {
    fn new(view: JobView, vtime: u64) -> JobQueue {
        let mut q = JobQueue {
            view,
            leased: BTreeMap::new(),
            pending: BTreeMap::new(),
            vtime,
            cost_us: None,
            free_from: 0,
            runs: BTreeMap::new(),
        };
        q.free_from = q.skip_taken(0);
        q
    }

    fn done_covering(&self, pos: u64) -> Option<u64> {
        let done = &self.view.done;
        let i = done.partition_point(|&(s, _)| s <= pos);
        i.checked_sub(1).map(|i| done[i].1).filter(|&e| e > pos)
    }

    fn leased_covering(&self, pos: u64) -> Option<u64> {
        self.leased.range(..=pos).next_back().map(|(&s, l)| s + l.len).filter(|&e| e > pos)
    }

    /// The first position at or after `pos` that is not done, leased or
    /// pending.
    fn skip_taken(&self, mut pos: u64) -> u64 {
        while let Some(e) =
            self.done_covering(pos).or_else(|| self.leased_covering(pos)).or_else(|| covering(&self.pending, pos))
        {
            pos = e;
        }
        pos
    }

    fn busy(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        let i = self.view.done.partition_point(|&(s, _)| s < end);
        let in_done = i.checked_sub(1).is_some_and(|i| self.view.done[i].1 > start);
        let in_leased = self.leased.range(..end).next_back().is_some_and(|(&s, l)| s + l.len > start);
        in_done || in_leased || overlaps(&self.pending, start, end)
    }

    /// Positions from `start` are free again (a lease or a report given
    /// up): the search for free work must look there.
    fn freed(&mut self, start: u64) {
        self.free_from = self.free_from.min(start);
    }

    /// The first range of up to `batch_size` positions that nobody has
    /// done, holds or reported, within one pass and the job's passes.
    fn next_free(&mut self) -> Option<(u64, u64)> {
        let cursor = self.skip_taken(self.free_from);
        self.free_from = cursor;
        (cursor < self.view.end()).then(|| self.range_at(cursor))
    }

    /// The query that starts at the free position `at` (below the end):
    /// up to `batch_size` positions, within its pass, up to the next
    /// taken one.
    fn range_at(&self, at: u64) -> (u64, u64) {
        let samples = self.view.samples.max(1);
        let end = self.view.end();
        let next_taken = self.first_taken_after(at).unwrap_or(u64::MAX);
        let pass_end = (at / samples + 1) * samples;
        let len = (self.view.batch_size as u64).min(next_taken - at).min(pass_end - at).min(end - at);
        (at, len)
    }

    /// The next free query for `worker`, which runs of consecutive
    /// queries: right after its last one when that is free, so that the
    /// chunks of rows it read (and read ahead) serve its next queries,
    /// instead of every worker reading every chunk for every third
    /// query. Else the first free query outside the runs other workers
    /// are on (the [`RUN_QUERIES`] queries after where each goes on), and
    /// when there is none, the first free query. Only which free query
    /// is chosen changes: what is free is as before.
    ///
    /// Runs stay in the first free query's pass, or go on into the next
    /// one at its start (as handing out the first free query does when
    /// a pass is all taken), so queries handed out before a batch size
    /// change stay near the front. A pass shorter than four runs has
    /// none: its queries go out first free first, as before runs.
    fn next_free_for(&mut self, worker: WorkerId) -> Option<(u64, u64)> {
        let first = self.next_free()?;
        let end = self.view.end();
        let samples = self.view.samples.max(1);
        let span = RUN_QUERIES.saturating_mul(self.view.batch_size.max(1) as u64);
        if samples / 4 < span {
            // A pass too short for runs side by side: its rows are few
            // enough to stay in every worker's cache anyway.
            return Some(first);
        }
        let front = first.0 / samples;
        if let Some(&at) = self.runs.get(&worker)
            && at < end
            && (at / samples == front || (at / samples == front.saturating_add(1) && at % samples == 0))
            && self.skip_taken(at) == at
        {
            return Some(self.range_at(at));
        }
        let mut at = first.0;
        // Each step moves past one other run, so this ends within as many
        // steps as there are workers.
        while let Some(past) = self
            .runs
            .iter()
            .filter(|(w, _)| **w != worker)
            .find_map(|(_, &r)| (r <= at && at < r.saturating_add(span)).then(|| r.saturating_add(span)))
        {
            at = self.skip_taken(past);
            if at >= end || at / samples != front {
                return Some(first);
            }
        }
        Some(self.range_at(at))
    }

    fn first_taken_after(&self, at: u64) -> Option<u64> {
        let i = self.view.done.partition_point(|&(s, _)| s <= at);
        let done = self.view.done.get(i).map(|&(s, _)| s);
        let leased = self.leased.range(at + 1..).next().map(|(&s, _)| s);
        let pending = self.pending.range(at + 1..).next().map(|(&s, _)| s);
        [done, leased, pending].into_iter().flatten().min()
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
    /// The jobs by virtual time: the next free slot goes to the first one
    /// here with free work.
    order: BTreeSet<(u64, String)>,
    /// Accepted reports of the last [`SHARE_WINDOW_MS`]: (worker, job) →
    /// (when, processing time µs), oldest first. What `explain` measures
    /// shares from.
    served: BTreeMap<(WorkerId, String), VecDeque<(u64, u64)>>,
    /// When each worker's first report reached this dispatcher: a worker
    /// seen for less than [`SHARE_WINDOW_MS`] was busy over that time only.
    first_report: BTreeMap<WorkerId, u64>,
}

/// The window over which workers' time shares are measured.
pub const SHARE_WINDOW_MS: u64 = 10_000;

impl Dispatcher {
    pub fn new(config: DispatcherConfig) -> Dispatcher {
        Dispatcher {
            config,
            jobs: BTreeMap::new(),
            order: BTreeSet::new(),
            served: BTreeMap::new(),
            first_report: BTreeMap::new(),
        }
    }

    /// Follow the replicated state: jobs that stopped are dropped with
    /// their leases; committed work leaves the pending set.
    pub fn sync(&mut self, running: &[JobView]) {
        self.jobs.retain(|name, _| running.iter().any(|j| &j.name == name));
        self.order.retain(|(_, name)| self.jobs.contains_key(name));
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
                    // What was dropped may be free again in part, and the
                    // done ranges may have shrunk (a finished job run again).
                    q.free_from = q.skip_taken(0);
                }
                None => {
                    // A job that joins starts level with the least served
                    // one: no burst to "catch up" on the others.
                    let vtime = self.jobs.values().map(|q| q.vtime).min().unwrap_or(0);
                    self.jobs.insert(view.name.clone(), JobQueue::new(view.clone(), vtime));
                    self.order.insert((vtime, view.name.clone()));
                }
            }
        }
    }

    /// Which workers served each running job over the last
    /// [`SHARE_WINDOW_MS`], with the share of each one's busy time and of
    /// the job's queries, the job's cost per query and the rate [`plan`]
    /// predicts for it. `workers` are the live workers with their slots.
    /// A job with no reports yet is listed with every live worker (any of
    /// them may take its next query).
    pub fn explain(&mut self, workers: &BTreeMap<WorkerId, usize>, now_ms: u64) -> BTreeMap<String, JobShare> {
        for v in self.served.values_mut() {
            v.retain(|(t, _)| t + SHARE_WINDOW_MS > now_ms);
        }
        self.served.retain(|(w, j), v| !v.is_empty() && workers.contains_key(w) && self.jobs.contains_key(j));
        self.first_report.retain(|w, _| workers.contains_key(w));
        let mut busy: BTreeMap<WorkerId, u64> = BTreeMap::new();
        let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
        for ((w, j), v) in &self.served {
            *busy.entry(*w).or_default() += v.iter().map(|(_, l)| l).sum::<u64>();
            *counted.entry(j.as_str()).or_default() += v.len();
        }
        let costs: Vec<(String, f64)> =
            self.jobs.iter().filter_map(|(n, q)| q.cost_us.map(|c| (n.clone(), c))).collect();
        // Each worker with what a query of each job cost there lately.
        let capacity: Vec<Capacity> = workers
            .iter()
            .map(|(w, &slots)| {
                let costs = self
                    .served
                    .range((*w, String::new())..)
                    .take_while(|((x, _), _)| x == w)
                    .map(|((_, j), v)| (j.clone(), v.iter().map(|(_, l)| *l as f64).sum::<f64>() / v.len() as f64))
                    .collect();
                Capacity { slots, costs }
            })
            .collect();
        let predicted = plan(&costs, &capacity);
        let mut out = BTreeMap::new();
        for (name, q) in &self.jobs {
            let mut shares: BTreeMap<WorkerId, f64> = BTreeMap::new();
            let mut query_shares: BTreeMap<WorkerId, f64> = BTreeMap::new();
            let total = counted.get(name.as_str()).copied().unwrap_or(0).max(1) as f64;
            for ((w, j), v) in &self.served {
                if j == name {
                    let time = busy.get(w).copied().unwrap_or(0).max(1) as f64;
                    shares.insert(*w, v.iter().map(|(_, l)| *l).sum::<u64>() as f64 / time);
                    query_shares.insert(*w, v.len() as f64 / total);
                }
            }
            if shares.is_empty() {
                shares = workers.keys().map(|w| (*w, 0.0)).collect();
            }
            let slots = shares.keys().filter_map(|w| Some((*w, *workers.get(w)?))).collect();
            // How much of its slots' time each worker spent on any job's
            // queries: the prediction assumes all of it.
            let slot_busy = shares
                .keys()
                .filter_map(|w| {
                    let seen = now_ms.saturating_sub(*self.first_report.get(w)?).clamp(1, SHARE_WINDOW_MS);
                    let capacity_us = seen as f64 * 1000.0 * workers.get(w).copied().unwrap_or(1).max(1) as f64;
                    Some((*w, (busy.get(w).copied().unwrap_or(0) as f64 / capacity_us).min(1.0)))
                })
                .collect();
            let (predicted_rate, worker_share) =
                predicted.jobs.get(name).map_or((None, None), |p| (Some(p.rate), Some(p.workers)));
            out.insert(
                name.clone(),
                JobShare {
                    cost_ms: q.cost_us.map(|c| c / 1000.0),
                    shares,
                    query_shares,
                    slots,
                    slot_busy,
                    predicted_rate,
                    worker_share,
                },
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
            // The job with the smallest virtual time that has free work
            // (ties by name): jobs without any are passed over.
            let mut pick = None;
            for (vtime, name) in &self.order {
                let Some(q) = self.jobs.get_mut(name) else { continue };
                if let Some(free) = q.next_free_for(worker) {
                    pick = Some((*vtime, name.clone(), free));
                    break;
                }
            }
            let Some((vtime, name, (start, len))) = pick else { break };
            let Some(q) = self.jobs.get_mut(&name) else { break };
            q.leased.insert(start, Lease { len, worker, deadline_ms: now_ms + self.config.lease_ms });
            q.runs.insert(worker, start + len);
            q.vtime += 1;
            let pass = start / q.view.samples.max(1);
            self.order.remove(&(vtime, name.clone()));
            self.order.insert((vtime + 1, name.clone()));
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
            // Its lease, if it was one, no longer holds the positions.
            q.freed(query.start);
            return Report::Repeat;
        }
        q.pending.insert(query.start, query.len);
        let l = latency_us as f64;
        q.cost_us = Some(q.cost_us.map_or(l, |c| 0.9 * c + 0.1 * l));
        // The report's processing time ended when it arrived; its start
        // counts as the worker's first moment seen.
        self.first_report.entry(worker).or_insert(now_ms.saturating_sub(latency_us / 1000));
        let served = self.served.entry((worker, query.job.clone())).or_default();
        served.push_back((now_ms, latency_us));
        while served.front().is_some_and(|(t, _)| t + SHARE_WINDOW_MS <= now_ms) {
            served.pop_front();
        }
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
                q.freed(query.start);
            }
        }
    }

    /// `worker` gave `query` back without running it (it failed there).
    /// False if the worker did not hold it (its lease was over: a query of
    /// a job stopped or failed meanwhile, or handed out again).
    pub fn release(&mut self, worker: WorkerId, query: &Query) -> bool {
        if let Some(q) = self.jobs.get_mut(&query.job)
            && q.leased.get(&query.start).is_some_and(|l| l.worker == worker && l.len == query.len)
        {
            q.leased.remove(&query.start);
            q.freed(query.start);
            return true;
        }
        false
    }

    /// `worker` is dead or left: its queries go back to the queue.
    pub fn worker_gone(&mut self, worker: WorkerId) -> usize {
        let mut n = 0;
        for q in self.jobs.values_mut() {
            let before = q.leased.len();
            let first = q.leased.iter().find(|(_, l)| l.worker == worker).map(|(&s, _)| s);
            q.leased.retain(|_, l| l.worker != worker);
            q.runs.remove(&worker);
            n += before - q.leased.len();
            if let Some(s) = first {
                q.freed(s);
            }
        }
        n
    }

    /// Leases past their deadline go back to the queue.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        for q in self.jobs.values_mut() {
            let before = q.leased.len();
            let first = q.leased.iter().find(|(_, l)| l.deadline_ms <= now_ms).map(|(&s, _)| s);
            q.leased.retain(|_, l| l.deadline_ms > now_ms);
            n += before - q.leased.len();
            if let Some(s) = first {
                q.freed(s);
            }
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
    /// Worker → share of this job's queries it ran (last 10 s): a worker
    /// with more slots, or faster ones, runs more of them.
    pub query_shares: BTreeMap<WorkerId, f64>,
    /// The query slots of the workers in `shares`.
    pub slots: BTreeMap<WorkerId, usize>,
    /// Worker → the share of its slots' time spent running queries of any
    /// job (last 10 s, or since its first report if later). [`plan`]
    /// assumes every slot always busy: where they are not, the workers are
    /// not what limits the rate.
    pub slot_busy: BTreeMap<WorkerId, f64>,
    /// The query rate [`plan`] predicts (queries/s).
    pub predicted_rate: Option<f64>,
    /// How many worker slots' worth of time the job should take.
    pub worker_share: Option<f64>,
}

/// A worker as [`plan`] counts it: its query slots, and what one query of
/// each job cost there lately (µs), for the jobs it ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capacity {
    pub slots: usize,
    pub costs: BTreeMap<String, f64>,
}

impl Capacity {
    /// `slots` slots of a worker of the jobs' average speed.
    pub fn slots(slots: usize) -> Capacity {
        Capacity { slots, costs: BTreeMap::new() }
    }
}

/// The rates that fair dispatch gives jobs of the given costs (µs per
/// query, averaged over the workers that ran them) on these workers.
///
/// Every free slot takes the next query of the job with the fewest handed
/// out, so each worker runs about as many queries of every job: a worker
/// with `s` slots and a cost `c_j` per query of job `j` there gives every
/// job `s / Σ_j c_j` queries/s, and a job's rate is the sum over the
/// workers. A worker's cost of a job it has not run is the job's average
/// cost scaled by how fast the worker ran the jobs it did run. When every
/// worker is alike this is `slots / Σ cost`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The common query rate, queries/s.
    pub rate: f64,
    pub jobs: BTreeMap<String, PlannedJob>,
    /// Each worker's part of the common rate (queries/s of every job), in
    /// the order the workers were given.
    pub per_worker: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedJob {
    pub rate: f64,
    /// Worker slots' worth of time (may be fractional: a slot's time can
    /// be split between jobs).
    pub workers: f64,
}

pub fn plan(costs: &[(String, f64)], workers: &[Capacity]) -> Plan {
    let empty = Plan { rate: 0.0, jobs: BTreeMap::new(), per_worker: vec![0.0; workers.len()] };
    if costs.is_empty() || costs.iter().any(|(_, c)| !(c.is_finite() && *c > 0.0)) {
        return empty;
    }
    // Each worker's cost of each job (µs), measured or estimated.
    let cost_on = |w: &Capacity| -> Vec<f64> {
        let measured: Vec<(f64, f64)> = costs
            .iter()
            .filter_map(|(n, avg)| w.costs.get(n).filter(|c| c.is_finite() && **c > 0.0).map(|c| (*avg, *c)))
            .collect();
        // How much slower than average this worker ran what it ran.
        let slowdown = if measured.is_empty() {
            1.0
        } else {
            measured.iter().map(|(_, c)| c).sum::<f64>() / measured.iter().map(|(a, _)| a).sum::<f64>()
        };
        costs
            .iter()
            .map(|(n, avg)| w.costs.get(n).copied().filter(|c| c.is_finite() && *c > 0.0).unwrap_or(avg * slowdown))
            .collect()
    };
    let mut rate = 0.0;
    let mut slot_time = vec![0.0; costs.len()];
    let mut per_worker = Vec::with_capacity(workers.len());
    for w in workers {
        let c = cost_on(w);
        let cycle_s: f64 = c.iter().sum::<f64>() / 1e6;
        let r = w.slots as f64 / cycle_s;
        per_worker.push(r);
        rate += r;
        for (t, cj) in slot_time.iter_mut().zip(&c) {
            *t += r * cj / 1e6;
        }
    }
    let jobs = costs.iter().zip(slot_time).map(|((n, _), workers)| (n.clone(), PlannedJob { rate, workers })).collect();
    Plan { rate, jobs, per_worker }
}

#[cfg(test)]
mod tests;
