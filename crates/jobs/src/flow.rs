//! The query flow's policy, sans-IO: what the leader does with workers'
//! reports, which queries it hands out, when workers waiting for work
//! are woken, which jobs fail, and what a flush writes and counts. Events
//! come in as method calls with the time as an argument (`report`,
//! `take`, `observe`, `unflushed`); effects go out as return values
//! (queries to hand out, "wake the waiting workers", jobs to fail,
//! reports to flush, a segment's bytes and its `CompleteQueries`
//! command). `leader.rs` owns one per term and does the I/O.

use std::collections::{BTreeMap, BTreeSet};

use idunno_rpc::v1;
use idunno_scheduler::{Dispatcher, DispatcherConfig, JobShare, JobView, Query, Report};
use idunno_state::{AssignmentNote, DoneQuery, FileRef, Job, JobCommand, ResultSegment};

use crate::results::{self, Layout, Writer};

/// Failed queries of a job, with no success between, that fail the job.
pub(crate) const FAILURES_IN_A_ROW: u32 = 5;

/// A finished query waiting for its commit, with its outputs as the
/// worker sent them (rows of a results file, less their first columns).
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) query: Query,
    pub(crate) done: DoneQuery,
    pub(crate) layout: Layout,
    pub(crate) outputs: bytes::Bytes,
}

/// Why a flush did not count its queries.
#[derive(Debug)]
pub(crate) enum Unflushed {
    /// Nothing was written or counted; the reports can be flushed later.
    Retry(String, Vec<Pending>),
    /// The count was refused or the job is gone: the reports are dropped
    /// and their queries run again.
    Drop(String, Vec<Query>),
}

/// One job's flush, ready to write: the segment's name and bytes, then
/// the command that counts its queries with the segment named (once the
/// bytes are stored, as version `version`).
pub(crate) struct Flush {
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) items: Vec<Pending>,
    job: String,
    expect_done: u64,
    rows: u64,
    last_pass: u64,
}

impl Flush {
    pub(crate) fn command(&self, version: u64, now_ms: u64) -> JobCommand {
        let segment = ResultSegment {
            file: FileRef { name: self.name.clone(), version },
            first_query: self.expect_done + 1,
            queries: self.items.len() as u64,
            rows: self.rows,
            bytes: self.bytes.len() as u64,
            last_pass: self.last_pass,
        };
        JobCommand::CompleteQueries {
            job: self.job.clone(),
            expect_done: self.expect_done,
            queries: self.items.iter().map(|p| p.done.clone()).collect(),
            now_ms,
            segment: Some(segment),
        }
    }
}

/// What one look at the state and the members changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// There may be new work: wake the workers waiting for some.
    pub(crate) wake: bool,
    /// Queries of dead workers put back in the queue.
    pub(crate) requeued: usize,
    /// Leases that ran out, put back in the queue.
    pub(crate) expired: usize,
    /// Workers seen gone for the first time.
    pub(crate) newly_gone: Vec<u64>,
}

pub(crate) struct QueryFlow {
    dispatcher: Dispatcher,
    /// The running jobs' definitions, to describe queries to workers.
    running: BTreeMap<String, Job>,
    pending: BTreeMap<String, Vec<Pending>>,
    /// Queries in a row that could not run, by job, with the last error.
    failing: BTreeMap<String, (u32, String)>,
    /// Jobs to mark failed, with the error.
    failures: BTreeMap<String, String>,
    gone_seen: BTreeSet<u64>,
    /// Each worker's query slots, as its last call said.
    slots: BTreeMap<u64, usize>,
    /// The served models each worker has loaded, as its last call said.
    serving: BTreeMap<u64, BTreeSet<String>>,
    /// Bytes of results held for `pending` and for the flush under way
    /// ([`held_bytes`]), and the most this leader holds before it hands
    /// out no more queries.
    held: usize,
    in_flush: usize,
    max_held: usize,
}

/// More slots than any worker is believed to have (a bound on what a
/// call can make the plan count).
const MAX_SLOTS: usize = 1024;

impl QueryFlow {
    pub(crate) fn new(lease_ms: u64, max_held: usize) -> QueryFlow {
        QueryFlow {
            dispatcher: Dispatcher::new(DispatcherConfig { lease_ms }),
            running: BTreeMap::new(),
            pending: BTreeMap::new(),
            failing: BTreeMap::new(),
            failures: BTreeMap::new(),
            gone_seen: BTreeSet::new(),
            slots: BTreeMap::new(),
            serving: BTreeMap::new(),
            held: 0,
            in_flush: 0,
            max_held,
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        self.dispatcher.check()
    }

    /// A worker's call said it has `slots` query slots (0: a worker that
    /// does not say, counted as one).
    pub(crate) fn worker_slots(&mut self, worker: u64, slots: u32) {
        self.slots.insert(worker, (slots as usize).clamp(1, MAX_SLOTS));
    }

    /// A worker's call named the served models it has loaded (at most as
    /// many as are served).
    pub(crate) fn worker_serving(&mut self, worker: u64, mut serving: Vec<String>) {
        serving.truncate(idunno_state::MAX_SERVED);
        self.serving.insert(worker, serving.into_iter().collect());
    }

    /// Which of the `live` workers are ready for each of the `served`
    /// models: those whose last call said they have it loaded.
    pub(crate) fn serve_ready<'a>(
        &mut self,
        served: impl Iterator<Item = &'a String>,
        live: &[u64],
    ) -> BTreeMap<String, Vec<u64>> {
        self.serving.retain(|w, _| live.contains(w));
        served
            .map(|name| {
                let workers = self.serving.iter().filter(|(_, s)| s.contains(name)).map(|(w, _)| *w).collect();
                (name.clone(), workers)
            })
            .collect()
    }

    /// A worker's results: how many were accepted (to be counted at the
    /// next flush).
    pub(crate) fn report(&mut self, worker: u64, results: Vec<v1::QueryResult>, now_ms: u64) -> u32 {
        let mut accepted = 0;
        for r in results {
            let query = Query { job: r.job.clone(), pass: r.pass, start: r.start, len: r.len };
            if !r.error.is_empty() {
                self.failed(worker, &query, r);
                continue;
            }
            let fits = |l: &Layout| Some(r.outputs.len() as u64) == r.len.checked_mul(l.output_bytes() as u64);
            let layout = match Layout::from_width(r.output_width) {
                Ok(l) if fits(&l) => l,
                _ => {
                    self.dispatcher.release(worker, &query);
                    tracing::warn!(worker, job = %r.job, "query outputs of the wrong size");
                    continue;
                }
            };
            self.failing.remove(&r.job);
            if self.dispatcher.report(worker, &query, r.latency_us, now_ms) == Report::Accepted {
                accepted += 1;
                let done = DoneQuery {
                    start: r.start,
                    len: r.len,
                    latency_us: r.latency_us,
                    labeled: r.labeled,
                    correct: r.correct,
                    loss_count: r.loss_count,
                    // In millionths, for a state every replica adds up
                    // alike (`as` saturates, and NaN becomes 0).
                    loss_micro: (r.loss_sum.max(0.0) * 1e6).round() as u64,
                };
                let p = Pending { query, done, layout, outputs: r.outputs };
                self.held += held_bytes(&p);
                self.pending.entry(r.job).or_default().push(p);
            }
        }
        accepted
    }

    fn failed(&mut self, worker: u64, query: &Query, r: v1::QueryResult) {
        let held = self.dispatcher.release(worker, query);
        tracing::warn!(job = %r.job, worker, error = %r.error, "a query failed");
        // A query the worker no longer held (of a job stopped or failed
        // meanwhile, a batch size since changed) says nothing about the
        // job as it runs now.
        if r.transient || !held {
            return;
        }
        // One failure may be a node's hiccup; failures in a row, with no
        // success between, are the job's own (a model that cannot run its
        // inputs).
        let f = self.failing.entry(r.job.clone()).or_insert((0, String::new()));
        f.0 += 1;
        f.1 = r.error;
        if f.0 >= FAILURES_IN_A_ROW {
            let error = f.1.clone();
            self.failing.remove(&r.job);
            self.failures.insert(r.job, error);
        }
    }

    /// Up to `want` queries for `worker`, described for it.
    /// Nothing while the results waiting to be written reach the bound:
    /// the leader's memory is bounded by its configuration, not by how
    /// much faster than SDFS takes them the workers produce results.
    pub(crate) fn take(&mut self, worker: u64, want: usize, now_ms: u64) -> Vec<v1::QueryTask> {
        if self.throttled() {
            return Vec::new();
        }
        let queries = self.dispatcher.take(worker, want, now_ms);
        queries.into_iter().filter_map(|q| Some(task(self.running.get(&q.job)?, &q))).collect()
    }

    /// The replicated state's running jobs and the members' states as of
    /// now (`up`: alive or suspect); leases that ran out go back to the
    /// queue, and so do dead workers' queries.
    pub(crate) fn observe(&mut self, running: BTreeMap<String, Job>, members: &[(u64, bool)], now_ms: u64) -> Observed {
        let more_work = running.iter().any(|(n, j)| {
            self.running
                .get(n)
                .is_none_or(|old| old.spec.batch_size != j.spec.batch_size || old.progress.pass != j.progress.pass)
        });
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
        self.dispatcher.sync(&views);
        self.running = running;
        let gone: BTreeSet<u64> = members.iter().filter(|(_, up)| !up).map(|(id, _)| *id).collect();
        let mut out = Observed::default();
        for w in &gone {
            out.requeued += self.dispatcher.worker_gone(*w);
            if !self.gone_seen.contains(w) {
                out.newly_gone.push(*w);
            }
        }
        out.expired = self.dispatcher.expire(now_ms);
        out.wake = more_work || out.expired > 0 || !out.newly_gone.is_empty();
        self.gone_seen = gone;
        out
    }

    /// Jobs whose queries keep failing, with the last error: to be
    /// marked failed.
    pub(crate) fn take_failures(&mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.failures)
    }

    /// The assignment table and its notes from the dispatcher's
    /// measurements, over the `live` workers: this node (`me`, with
    /// `my_slots`) and the others with the slots their calls said (one
    /// until they call).
    pub(crate) fn assignments(
        &mut self,
        live: &[u64],
        me: u64,
        my_slots: usize,
        now_ms: u64,
    ) -> (BTreeMap<String, Vec<u64>>, BTreeMap<String, AssignmentNote>) {
        self.slots.retain(|w, _| live.contains(w));
        let workers: BTreeMap<u64, usize> = live
            .iter()
            .map(|w| {
                (*w, if *w == me { my_slots.clamp(1, MAX_SLOTS) } else { self.slots.get(w).copied().unwrap_or(1) })
            })
            .collect();
        assignment_table(&self.dispatcher.explain(&workers, now_ms))
    }

    /// Every job's accepted reports, to flush.
    pub(crate) fn take_pending(&mut self) -> BTreeMap<String, Vec<Pending>> {
        self.in_flush += std::mem::take(&mut self.held);
        std::mem::take(&mut self.pending)
    }

    /// The flush under way came back (its reports that did not count come
    /// through [`QueryFlow::unflushed`]).
    pub(crate) fn flush_returned(&mut self) {
        self.in_flush = 0;
    }

    /// Whether the results held (waiting for a flush, or in the one under
    /// way) have reached the bound.
    pub(crate) fn throttled(&self) -> bool {
        self.held + self.in_flush >= self.max_held
    }

    /// A flush of `job` that did not count: its reports wait for the next
    /// flush (before any that came meanwhile), or their queries run again.
    pub(crate) fn unflushed(&mut self, job: String, why: Unflushed) {
        match why {
            Unflushed::Retry(_, items) => {
                self.held += items.iter().map(held_bytes).sum::<usize>();
                let slot = self.pending.entry(job).or_default();
                let newer = std::mem::take(slot);
                *slot = items;
                slot.extend(newer);
            }
            Unflushed::Drop(_, queries) => self.dispatcher.abandon(&queries),
        }
    }
}

/// Bytes a pending report holds until its flush is done: its outputs,
/// and the segment rows a flush copies them into (query, pass and input
/// numbers, then the output).
fn held_bytes(p: &Pending) -> usize {
    p.outputs.len() * 2 + usize::try_from(p.query.len).unwrap_or(usize::MAX / 2).saturating_mul(24)
}

/// One job's reports as a segment to write, against the job as the state
/// has it now: reports of work counted meanwhile (by a leader that lost
/// its place, still committing its last reports) are left out, since
/// they would have the whole batch refused. `None`: nothing left.
pub(crate) fn prepare_flush(job: &str, j: Option<&Job>, items: Vec<Pending>) -> Result<Option<Flush>, Unflushed> {
    let queries = |items: &[Pending]| items.iter().map(|p| p.query.clone()).collect::<Vec<_>>();
    let Some(j) = j else { return Err(Unflushed::Drop(format!("job {job} is gone"), queries(&items))) };
    let mut items: Vec<Pending> =
        items.into_iter().filter(|p| !j.progress.overlaps_done(p.query.start, p.query.len)).collect();
    let Some(layout) = items.first().map(|p| p.layout) else { return Ok(None) };
    if items.iter().any(|p| p.layout != layout) {
        let why = "queries of one job with outputs of different widths".to_string();
        return Err(Unflushed::Drop(why, queries(&items)));
    }
    // In stream order: query numbers follow it.
    items.sort_by_key(|p| p.query.start);
    let expect_done = j.progress.queries_done;
    let mut writer = Writer::new(layout);
    let mut last_pass = 0;
    for (i, p) in items.iter().enumerate() {
        writer.push_query(expect_done + 1 + i as u64, p.query.pass, p.query.first_input(j.spec.samples), &p.outputs);
        last_pass = last_pass.max(p.query.pass);
    }
    let rows = writer.rows() as u64;
    let bytes = writer.into_bytes();
    let name = results::segment_name(job, expect_done + 1, &bytes);
    Ok(Some(Flush { name, bytes, items, job: job.to_string(), expect_done, rows, last_pass }))
}

/// The assignment table and its notes: a job's workers are those that
/// spent time on it in the last 10 s (or, before any report, every live
/// worker).
fn assignment_table(
    shares: &BTreeMap<String, JobShare>,
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
                shares_permille: s.shares.iter().map(|(w, f)| (*w, coarse(*f))).collect(),
                queries_permille: s.query_shares.iter().map(|(w, f)| (*w, coarse(*f))).collect(),
                slots: s.slots.iter().map(|(w, n)| (*w, *n as u32)).collect(),
                busy_permille: s.slot_busy.iter().map(|(w, f)| (*w, coarse(*f))).collect(),
            },
        );
    }
    (table, notes)
}

/// A share in thousandths, to the nearest 5%.
fn coarse(share: f64) -> u32 {
    ((share * 20.0).round() * 50.0) as u32
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
    let first_input = q.first_input(spec.samples);
    let mut pieces = Vec::new();
    let shards = spec.input_shards.iter().enumerate().map(|(i, s)| (i as u32, false, s));
    for (input, labels, shards) in shards.chain(std::iter::once((0, true, &spec.label_shards))) {
        for (k, first_row, rows) in idunno_state::shard_pieces(shards, first_input, q.len) {
            let file = Some(file_ref(&shards[k].name, shards[k].version));
            pieces.push(v1::InputPiece { input, labels, file, first_row, rows });
        }
    }
    v1::QueryTask {
        job: q.job.clone(),
        pass: q.pass,
        start: q.start,
        len: q.len,
        first_input,
        model: Some(file_ref(&spec.model, spec.model_version)),
        inputs,
        labels: spec.labels.as_ref().map(|l| file_ref(l, spec.labels_version)),
        output: match spec.output {
            idunno_state::OutputKind::Class => "class".into(),
            idunno_state::OutputKind::Vector => "vector".into(),
        },
        transpose: spec.transpose.clone(),
        pieces,
    }
}

#[cfg(test)]
mod tests {
    use idunno_state::{JobProgress, JobResults, JobSpec, JobState};

    use super::*;
    use crate::results::{Output, Reader};

    const NOW: u64 = 1_000_000;

    fn job(name: &str, samples: u64, batch: u32) -> Job {
        let spec = JobSpec {
            name: name.into(),
            model: "m".into(),
            inputs: "x".into(),
            batch_size: batch,
            samples,
            passes: Some(1),
            ..Default::default()
        };
        Job { spec, state: JobState::Running, progress: JobProgress::default(), results: JobResults::default() }
    }

    fn running(jobs: &[Job]) -> BTreeMap<String, Job> {
        jobs.iter().map(|j| (j.spec.name.clone(), j.clone())).collect()
    }

    /// A worker's answer to `t`: classes 0, 1, … per input.
    fn ok(t: &v1::QueryTask) -> v1::QueryResult {
        let outputs: Vec<u8> = (0..t.len as i64).flat_map(|c| c.to_le_bytes()).collect();
        v1::QueryResult {
            job: t.job.clone(),
            pass: t.pass,
            start: t.start,
            len: t.len,
            latency_us: 1000,
            outputs: outputs.into(),
            ..Default::default()
        }
    }

    fn failed(t: &v1::QueryTask, transient: bool) -> v1::QueryResult {
        v1::QueryResult { error: "the model cannot run".into(), transient, ..ok(t) }
    }

    fn flow_with(jobs: &[Job], workers: &[u64]) -> QueryFlow {
        let mut flow = QueryFlow::new(10_000, usize::MAX);
        let members: Vec<(u64, bool)> = workers.iter().map(|w| (*w, true)).collect();
        assert!(flow.observe(running(jobs), &members, NOW).wake, "a new job is new work");
        flow
    }

    #[test]
    fn results_waiting_to_be_written_stop_the_handing_out_at_their_bound() {
        // A query of 10 inputs holds 400 bytes: 80 of outputs (classes),
        // as many again in its segment, and 24 per row.
        let mut flow = QueryFlow::new(10_000, 800);
        let members = [(2, true)];
        assert!(flow.observe(running(&[job("j", 100, 10)]), &members, NOW).wake);
        let tasks = flow.take(2, 3, NOW);
        assert_eq!(tasks.len(), 3);
        assert_eq!(flow.report(2, tasks[..2].iter().map(ok).collect(), NOW), 2);
        assert!(flow.throttled());
        assert!(flow.take(2, 3, NOW).is_empty(), "800 bytes held: nothing more until a flush");
        // The last lease still delivers.
        assert_eq!(flow.report(2, vec![ok(&tasks[2])], NOW), 1);
        // Taken for a flush, still held until it comes back.
        let pending = flow.take_pending();
        assert!(flow.take(2, 1, NOW).is_empty());
        flow.flush_returned();
        assert!(!flow.throttled());
        assert_eq!(flow.take(2, 1, NOW).len(), 1);
        // A flush that could not write hands its reports back: held again.
        let items = pending["j"].clone();
        flow.unflushed("j".into(), Unflushed::Retry("no replica".into(), items));
        assert!(flow.throttled());
        assert!(flow.take(2, 1, NOW).is_empty());
        flow.check().unwrap();
    }

    #[test]
    fn accepted_reports_wait_for_the_flush_and_repeats_are_not_taken() {
        let mut flow = flow_with(&[job("j", 100, 10)], &[2]);
        let tasks = flow.take(2, 3, NOW);
        assert_eq!(tasks.iter().map(|t| t.start).collect::<Vec<_>>(), [0, 10, 20]);
        assert_eq!(tasks[0].model.as_ref().map(|m| m.name.as_str()), Some("m"));
        let results: Vec<v1::QueryResult> = tasks.iter().map(ok).collect();
        assert_eq!(flow.report(2, results.clone(), NOW), 3);
        // The same reports again (a retried call) are not counted twice.
        assert_eq!(flow.report(2, results, NOW), 0);
        let pending = flow.take_pending();
        assert_eq!(pending["j"].len(), 3);
        assert!(flow.take_pending().is_empty());
        flow.check().unwrap();
    }

    #[test]
    fn failures_in_a_row_fail_the_job_but_not_transient_or_stale_ones() {
        let mut flow = flow_with(&[job("j", 1000, 10)], &[2]);
        // Transient failures (a node's hiccup) never count.
        for _ in 0..FAILURES_IN_A_ROW {
            let t = flow.take(2, 1, NOW);
            flow.report(2, vec![failed(&t[0], true)], NOW);
        }
        assert!(flow.take_failures().is_empty());
        // A failure of a query the worker does not hold says nothing.
        let stale = v1::QueryTask { job: "j".into(), start: 990, len: 10, ..Default::default() };
        for _ in 0..FAILURES_IN_A_ROW {
            flow.report(2, vec![failed(&stale, false)], NOW);
        }
        assert!(flow.take_failures().is_empty());
        // A success between resets the count.
        for _ in 0..FAILURES_IN_A_ROW - 1 {
            let t = flow.take(2, 1, NOW);
            flow.report(2, vec![failed(&t[0], false)], NOW);
        }
        let t = flow.take(2, 1, NOW);
        flow.report(2, vec![ok(&t[0])], NOW);
        let t = flow.take(2, 1, NOW);
        flow.report(2, vec![failed(&t[0], false)], NOW);
        assert!(flow.take_failures().is_empty());
        for _ in 1..FAILURES_IN_A_ROW {
            let t = flow.take(2, 1, NOW);
            flow.report(2, vec![failed(&t[0], false)], NOW);
        }
        let failures = flow.take_failures();
        assert_eq!(failures.get("j").map(String::as_str), Some("the model cannot run"));
        flow.check().unwrap();
    }

    #[test]
    fn outputs_of_the_wrong_size_are_refused_and_the_query_runs_again() {
        let mut flow = flow_with(&[job("j", 10, 10)], &[2]);
        let t = flow.take(2, 1, NOW);
        let mut r = ok(&t[0]);
        r.outputs = r.outputs.slice(8..);
        assert_eq!(flow.report(2, vec![r], NOW), 0);
        let again = flow.take(3, 1, NOW);
        assert_eq!(again.len(), 1, "released for another worker");
        assert_eq!(again[0].start, 0);
    }

    #[test]
    fn a_dead_workers_queries_go_back_and_wake_the_waiting_once() {
        let j = [job("j", 100, 10)];
        let mut flow = flow_with(&j, &[2, 3]);
        assert_eq!(flow.take(2, 4, NOW).len(), 4);
        let out = flow.observe(running(&j), &[(2, false), (3, true)], NOW);
        assert_eq!(out, Observed { wake: true, requeued: 4, expired: 0, newly_gone: vec![2] });
        let out = flow.observe(running(&j), &[(2, false), (3, true)], NOW);
        assert_eq!(out, Observed::default(), "nothing new: no one is woken");
        assert_eq!(flow.take(3, 10, NOW).len(), 10, "all ten queries are free again");
        // Leases that run out go back too.
        let out = flow.observe(running(&j), &[(2, false), (3, true)], NOW + 10_001);
        assert!(out.wake && out.expired == 10, "{out:?}");
        flow.check().unwrap();
    }

    #[test]
    fn a_flush_that_could_not_write_keeps_its_reports_first() {
        let mut flow = flow_with(&[job("j", 100, 10)], &[2]);
        let tasks = flow.take(2, 3, NOW);
        flow.report(2, vec![ok(&tasks[0]), ok(&tasks[1])], NOW);
        let first = flow.take_pending().remove("j").unwrap();
        flow.report(2, vec![ok(&tasks[2])], NOW);
        flow.unflushed("j".into(), Unflushed::Retry("a replica died".into(), first));
        let starts: Vec<u64> = flow.take_pending()["j"].iter().map(|p| p.query.start).collect();
        assert_eq!(starts, [0, 10, 20]);
        // Dropped reports' queries run again.
        let again = flow.take(2, 1, NOW);
        assert_eq!(again[0].start, 30);
        flow.report(2, vec![ok(&again[0])], NOW);
        let dropped = flow.take_pending().remove("j").unwrap();
        let q = dropped.iter().map(|p| p.query.clone()).collect();
        flow.unflushed("j".into(), Unflushed::Drop("refused".into(), q));
        assert_eq!(flow.take(3, 1, NOW)[0].start, 30);
    }

    #[test]
    fn a_flush_leaves_out_counted_work_and_numbers_queries_in_stream_order() {
        let mut j = job("j", 100, 10);
        let mut flow = flow_with(&[j.clone()], &[2]);
        let tasks = flow.take(2, 3, NOW);
        let results: Vec<v1::QueryResult> = tasks.iter().rev().map(ok).collect();
        flow.report(2, results, NOW);
        let items = flow.take_pending().remove("j").unwrap();
        // Meanwhile another leader counted the first query (7 counted).
        j.progress.done = vec![(0, 10)];
        j.progress.queries_done = 7;
        let f = prepare_flush("j", Some(&j), items.clone()).unwrap().unwrap();
        assert_eq!(f.items.iter().map(|p| p.query.start).collect::<Vec<_>>(), [10, 20]);
        let JobCommand::CompleteQueries { expect_done, queries, segment: Some(s), .. } = f.command(4, NOW) else {
            panic!("not a count");
        };
        assert_eq!((expect_done, queries.len(), s.first_query, s.queries, s.rows), (7, 2, 8, 2, 20));
        assert_eq!((s.file.version, s.bytes), (4, f.bytes.len() as u64));
        assert!(results::is_segment_of("j", &f.name), "{}", f.name);
        let mut reader = Reader::default();
        let rows = reader.feed(&f.bytes).unwrap();
        reader.finish().unwrap();
        assert_eq!((rows[0].query, rows[0].input, &rows[0].output), (8, 10, &Output::Class(0)));
        assert_eq!((rows[19].query, rows[19].input, &rows[19].output), (9, 29, &Output::Class(9)));
        // A job gone: the reports are dropped and their queries run again.
        match prepare_flush("j", None, items) {
            Err(Unflushed::Drop(why, q)) => assert!(why.contains("gone") && q.len() == 3),
            _ => panic!("a flush of a job that is gone"),
        }
    }
}
