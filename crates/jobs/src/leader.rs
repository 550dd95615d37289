//! The query flow on the coordinator leader. Workers call `Work` with
//! what they finished and get new queries; every `flush_ms` the leader
//! writes the finished queries' rows to `<job>.results` in SDFS and then
//! counts the queries in the replicated state with one `CompleteQueries`
//! command per job (all or none, against the count it expects). Only that
//! commit makes a query count: a report lost with a leader is redone and
//! counted by the next one.
//!
//! The dispatcher and the reports awaiting their commit sit behind one
//! mutex, held for short, non-async sections only; the tick task is the
//! one writer of results and commands.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use idunno_rpc::v1;
use idunno_scheduler::{Dispatcher, DispatcherConfig, JobView, Query, Report};
use idunno_state::{AssignmentNote, DoneQuery, FileRef, Job, JobCommand, JobState, Reply, ResultSegment};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::results::{self, Layout, Writer};
use crate::{Jobs, WorkerConfig, now_ms};

/// How often the assignment notes (costs, shares) are recorded at most.
const NOTES_EVERY: Duration = Duration::from_secs(3);

/// The assignment table and its notes from the dispatcher's measurements:
/// a job's workers are those that spent time on it in the last 10 s (or,
/// before any report, every live worker).
fn assignment_table(
    shares: &BTreeMap<String, idunno_scheduler::JobShare>,
) -> (BTreeMap<String, Vec<u64>>, BTreeMap<String, AssignmentNote>) {
    let mut table = BTreeMap::new();
    let mut notes = BTreeMap::new();
    for (job, s) in shares {
        let measured: Vec<u64> = s.shares.iter().filter(|(_, f)| **f > 0.0).map(|(w, _)| *w).collect();
        let workers = if measured.is_empty() { s.shares.keys().copied().collect() } else { measured };
        table.insert(job.clone(), workers);
        notes.insert(
            job.clone(),
            AssignmentNote {
                cost_us: s.cost_ms.map(|c| (c * 1000.0).round() as u64),
                predicted_mqps: s.predicted_rate.map(|r| (r * 1000.0).round() as u64),
                // Coarse (5%), so that noise does not make a new note.
                shares_permille: s.shares.iter().map(|(w, f)| (*w, ((f * 20.0).round() * 50.0) as u32)).collect(),
            },
        );
    }
    (table, notes)
}

/// Failed queries of a job, with no success between, that fail the job.
const FAILURES_IN_A_ROW: u32 = 5;

/// A finished query waiting for its commit, with its outputs as the
/// worker sent them (rows of a results file, less their first columns).
#[derive(Clone)]
struct Pending {
    query: Query,
    done: DoneQuery,
    layout: Layout,
    outputs: bytes::Bytes,
}

#[derive(Default)]
struct Inner {
    /// This node leads and the dispatcher follows the replicated state.
    active: bool,
    dispatcher: Dispatcher,
    /// The running jobs' definitions, to describe queries to workers.
    running: BTreeMap<String, Job>,
    pending: BTreeMap<String, Vec<Pending>>,
    /// Queries in a row that could not run, by job, with the last error.
    failing: BTreeMap<String, (u32, String)>,
    /// Jobs to mark failed, with the error.
    failures: BTreeMap<String, String>,
}

pub(crate) struct Leader {
    inner: Mutex<Inner>,
    /// Woken when there may be new work for long-polling workers.
    work: Notify,
    lease_ms: u64,
}

impl Leader {
    pub(crate) fn new(config: &WorkerConfig) -> Leader {
        Leader { inner: Mutex::new(Inner::default()), work: Notify::new(), lease_ms: config.lease_ms }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self, active: bool) {
        let mut inner = self.lock();
        *inner = Inner { active, ..Default::default() };
        inner.dispatcher = Dispatcher::new(DispatcherConfig { lease_ms: self.lease_ms });
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let inner = self.lock();
        if inner.active { inner.dispatcher.check() } else { Ok(()) }
    }

    /// A worker's call: take its results, hand it queries.
    pub(crate) async fn work(&self, req: v1::WorkRequest) -> Result<v1::WorkReply, Status> {
        let worker = req.worker;
        let mut accepted = 0;
        {
            let mut inner = self.lock();
            if !inner.active {
                return Err(Status::failed_precondition("this node is not the coordinator leader"));
            }
            for r in req.results {
                let query = Query { job: r.job.clone(), pass: r.pass, start: r.start, len: r.len };
                if !r.error.is_empty() {
                    let held = inner.dispatcher.release(worker, &query);
                    tracing::warn!(job = %r.job, worker, error = %r.error, "a query failed");
                    // A query the worker no longer held (of a job stopped or
                    // failed meanwhile, a batch size since changed) says
                    // nothing about the job as it runs now.
                    if r.transient || !held {
                        continue;
                    }
                    // One failure may be a node's hiccup; failures in a row,
                    // with no success between, are the job's own (a model
                    // that cannot run its inputs).
                    let f = inner.failing.entry(r.job.clone()).or_insert((0, String::new()));
                    f.0 += 1;
                    f.1 = r.error;
                    if f.0 >= FAILURES_IN_A_ROW {
                        let error = f.1.clone();
                        inner.failing.remove(&r.job);
                        inner.failures.insert(r.job, error);
                    }
                    continue;
                }
                let layout = Layout::from_width(r.output_width);
                let fits = |l: &Layout| Some(r.outputs.len() as u64) == r.len.checked_mul(l.output_bytes() as u64);
                let layout = match layout {
                    Ok(l) if fits(&l) => l,
                    _ => {
                        inner.dispatcher.release(worker, &query);
                        tracing::warn!(worker, job = %r.job, "query outputs of the wrong size");
                        continue;
                    }
                };
                inner.failing.remove(&r.job);
                if inner.dispatcher.report(worker, &query, r.latency_us, now_ms()) == Report::Accepted {
                    accepted += 1;
                    let done = DoneQuery {
                        start: r.start,
                        len: r.len,
                        latency_us: r.latency_us,
                        labeled: r.labeled,
                        correct: r.correct,
                    };
                    let p = Pending { query, done, layout, outputs: r.outputs };
                    inner.pending.entry(r.job).or_default().push(p);
                }
            }
        }
        let want = req.want.min(64) as usize;
        let give_up = Instant::now() + Duration::from_millis(req.wait_ms.min(5000) as u64);
        loop {
            let notified = self.work.notified();
            let queries = self.take(worker, want);
            if !queries.is_empty() || want == 0 || Instant::now() >= give_up {
                return Ok(v1::WorkReply { queries, accepted });
            }
            let _ = tokio::time::timeout_at(give_up, notified).await;
        }
    }

    fn take(&self, worker: u64, want: usize) -> Vec<v1::QueryTask> {
        let mut inner = self.lock();
        if !inner.active {
            return Vec::new();
        }
        let queries = inner.dispatcher.take(worker, want, now_ms());
        queries.into_iter().filter_map(|q| Some(task(inner.running.get(&q.job)?, &q))).collect()
    }
}

fn file_ref(name: &str, version: u64) -> v1::FileVersionRef {
    v1::FileVersionRef { name: name.to_string(), version }
}

/// What a worker needs to know to run `q`.
pub(crate) fn task(job: &Job, q: &Query) -> v1::QueryTask {
    let spec = &job.spec;
    let inputs = if spec.input_files.is_empty() {
        vec![file_ref(&spec.inputs, 0)]
    } else {
        spec.input_files.iter().map(|f| file_ref(&f.name, f.version)).collect()
    };
    v1::QueryTask {
        job: q.job.clone(),
        pass: q.pass,
        start: q.start,
        len: q.len,
        first_input: q.first_input(spec.samples),
        model: Some(file_ref(&spec.model, spec.model_version)),
        inputs,
        labels: spec.labels.as_ref().map(|l| file_ref(l, spec.labels_version)),
        output: match spec.output {
            idunno_state::OutputKind::Class => "class".into(),
            idunno_state::OutputKind::Vector => "vector".into(),
        },
        transpose: spec.transpose.clone(),
    }
}

/// The query flow, for each term this node leads the coordinator group.
pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    jobs.leader.reset(false);
    let leadership = jobs.coordinator.leadership();
    idunno_coordinator::leader_duty(leadership, shutdown, |term, stop| {
        let jobs = jobs.clone();
        async move {
            jobs.leader.reset(true);
            tracing::info!(term, "coordinator leader: running the query flow");
            lead(&jobs, stop).await;
            jobs.leader.reset(false);
            tracing::info!(term, "no longer the coordinator leader: the query flow stops");
        }
    })
    .await
}

/// The leader's loop for one term: follow the state, keep leases honest,
/// keep the assignment table current, flush finished queries.
async fn lead(jobs: &Arc<Jobs>, stop: CancellationToken) {
    let leader = &jobs.leader;
    let mut upkeep = crate::compact::Upkeep::default();
    let mut last_flush = Instant::now();
    let mut last_notes = Instant::now();
    let mut gone_seen: BTreeSet<u64> = BTreeSet::new();
    let mut state_rx = jobs.coordinator.watch_state();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let state = jobs.coordinator.local_state();
        let running: BTreeMap<String, Job> = state
            .state
            .inference
            .jobs
            .iter()
            .filter(|(_, j)| j.state == JobState::Running)
            .map(|(n, j)| (n.clone(), j.clone()))
            .collect();
        let views: Vec<JobView> = running
            .iter()
            .map(|(name, j)| JobView {
                name: name.clone(),
                passes: j.spec.passes,
                samples: j.spec.samples,
                batch_size: j.spec.batch_size,
                done: j.progress.done.clone(),
            })
            .collect();
        let members = jobs.membership.view().members;
        let mut live: Vec<u64> = members.iter().filter(|m| m.state.is_up()).map(|m| m.identity.id.0).collect();
        live.push(jobs.id);
        let gone: BTreeSet<u64> =
            members.iter().filter(|m| !m.state.is_up()).map(|m| m.identity.id.0).filter(|id| *id != jobs.id).collect();
        let (assignments, failures) = {
            let mut inner = leader.lock();
            let more_work = running.iter().any(|(n, j)| {
                inner
                    .running
                    .get(n)
                    .is_none_or(|old| old.spec.batch_size != j.spec.batch_size || old.progress.pass != j.progress.pass)
            });
            inner.dispatcher.sync(&views);
            inner.running = running.clone();
            for w in &gone {
                let n = inner.dispatcher.worker_gone(*w);
                if n > 0 || !gone_seen.contains(w) {
                    tracing::info!(worker = w, requeued = n, "worker gone: its queries go back to the queue");
                }
            }
            let expired = inner.dispatcher.expire(now_ms());
            if expired > 0 {
                tracing::warn!(expired, "query leases expired: requeued");
            }
            if more_work || expired > 0 || gone.iter().any(|w| !gone_seen.contains(w)) {
                leader.work.notify_waiters();
            }
            let failures = std::mem::take(&mut inner.failures);
            let shares = inner.dispatcher.explain(&live, jobs.config.slots, now_ms());
            (assignment_table(&shares), failures)
        };
        gone_seen = gone;
        let (assignments, notes) = assignments;
        // The workers of a job change rarely; the measurements behind them
        // are recorded every few seconds at most.
        let notes_due = notes != state.state.inference.assignment_notes && last_notes.elapsed() >= NOTES_EVERY;
        if assignments != state.state.inference.assignments || notes_due {
            last_notes = Instant::now();
            if let Err(e) = jobs.coordinator.apply(JobCommand::SetAssignments { assignments, notes }).await {
                tracing::warn!(error = %e, "could not record assignments");
            }
        }
        for (job, error) in failures {
            tracing::warn!(%job, %error, "marking the job failed");
            let cmd = JobCommand::FailJob { job, error };
            let _ = jobs.coordinator.apply(cmd).await;
        }
        if last_flush.elapsed() >= Duration::from_millis(jobs.config.flush_ms) {
            last_flush = Instant::now();
            flush(&jobs).await;
            upkeep.run(&jobs).await;
        }
    }
}

/// Write and count every job's finished queries.
async fn flush(jobs: &Jobs) {
    let pending = std::mem::take(&mut jobs.leader.lock().pending);
    for (job, items) in pending {
        if items.is_empty() {
            continue;
        }
        let queries: Vec<Query> = items.iter().map(|p| p.query.clone()).collect();
        match flush_job(jobs, &job, items).await {
            Ok(n) => tracing::debug!(%job, queries = n, "counted"),
            Err(Unflushed::Retry(e, items)) => {
                // The results could not be written (a replica that died
                // and is not yet known dead): nothing was counted, the
                // reports are kept for the next flush instead of rerun.
                tracing::warn!(%job, error = %e, "could not write results; retrying at the next flush");
                let mut inner = jobs.leader.lock();
                if inner.active {
                    let slot = inner.pending.entry(job).or_default();
                    let newer = std::mem::take(slot);
                    *slot = items;
                    slot.extend(newer);
                }
            }
            Err(Unflushed::Drop(e)) => {
                tracing::warn!(%job, error = %e, "could not count finished queries; they will run again");
                jobs.leader.lock().dispatcher.abandon(&queries);
            }
        }
    }
}

/// Why a flush did not count its queries.
enum Unflushed {
    /// Nothing was written or counted; the reports can be flushed later.
    Retry(String, Vec<Pending>),
    /// The count was refused or the job is gone: the reports are dropped.
    Drop(String),
}

/// Write the rows of `items` as one segment, then count the queries with
/// the segment named in the same command: all or none.
async fn flush_job(jobs: &Jobs, job: &str, items: Vec<Pending>) -> Result<usize, Unflushed> {
    let (expect_done, samples, mut items) = {
        let state = jobs.coordinator.local_state();
        let j = state.state.inference.jobs.get(job).ok_or_else(|| Unflushed::Drop(format!("job {job} is gone")))?;
        // Work counted meanwhile by someone else (a leader that lost its
        // place still committing its last reports) is a repeat; sent
        // along, it would have the whole batch refused.
        let items: Vec<Pending> =
            items.into_iter().filter(|p| !j.progress.overlaps_done(p.query.start, p.query.len)).collect();
        (j.progress.queries_done, j.spec.samples, items)
    };
    let Some(layout) = items.first().map(|p| p.layout) else { return Ok(0) };
    if items.iter().any(|p| p.layout != layout) {
        return Err(Unflushed::Drop("queries of one job with outputs of different widths".into()));
    }
    // In stream order: query numbers follow it.
    items.sort_by_key(|p| p.query.start);
    let mut writer = Writer::new(layout);
    let mut done = Vec::with_capacity(items.len());
    let mut last_pass = 0;
    for (i, p) in items.iter().enumerate() {
        writer.push_query(expect_done + 1 + i as u64, p.query.pass, p.query.first_input(samples), &p.outputs);
        done.push(p.done.clone());
        last_pass = last_pass.max(p.query.pass);
    }
    let rows = writer.rows() as u64;
    let bytes = writer.into_bytes();
    let name = results::segment_name(job, expect_done + 1, &bytes);
    let version = match jobs.sdfs.put(&name, &bytes).await {
        Ok(stored) => stored.version,
        Err(e) => return Err(Unflushed::Retry(format!("writing {name}: {e}"), items)),
    };
    let segment = ResultSegment {
        file: FileRef { name: name.clone(), version },
        first_query: expect_done + 1,
        queries: done.len() as u64,
        rows,
        bytes: bytes.len() as u64,
        last_pass,
    };
    let n = done.len();
    let cmd = JobCommand::CompleteQueries {
        job: job.to_string(),
        expect_done,
        queries: done,
        now_ms: now_ms(),
        segment: Some(segment),
    };
    let applied = match jobs.coordinator.apply(cmd).await {
        Ok(out) => out.applied,
        // Not known to be committed: the segment may yet be counted, so
        // it stays (the sweep removes it if it never is).
        Err(e) => return Err(Unflushed::Drop(e.to_string())),
    };
    match applied {
        Ok(Reply::Completed { finished, .. }) => {
            if finished {
                tracing::info!(%job, "job done");
            }
            Ok(n)
        }
        other => {
            crate::compact::delete(jobs, &name).await;
            match other {
                Ok(other) => Err(Unflushed::Drop(format!("unexpected reply {other:?}"))),
                Err(refusal) => Err(Unflushed::Drop(refusal.to_string())),
            }
        }
    }
}
