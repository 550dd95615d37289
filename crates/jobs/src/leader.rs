//! The query flow on the coordinator leader: the I/O around
//! [`QueryFlow`] (`flow.rs`, the policy, sans-IO). Workers call `Work`
//! with what they finished and get new queries; every `flush_ms` the
//! leader writes the finished queries' rows as one segment per job in
//! SDFS and then counts the queries in the replicated state with one
//! `CompleteQueries` command per job that names the segment (all or
//! none, against the count it expects). Only that commit makes a query
//! count: a report lost with a leader is redone and counted by the next
//! one.
//!
//! One `QueryFlow` per term, owned by the term's task: `Work` handlers
//! talk to it over a channel, and it hands what needs I/O (writing
//! segments, commits, compaction) to the term's writer task, which
//! reports back what it could not count. The owner never waits on I/O,
//! so workers are answered while a flush or a compaction runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_rpc::v1;
use idunno_state::{AssignmentNote, EventKind, Job, JobCommand, JobState, Reply, ServeCommand};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::flow::{Pending, QueryFlow, Unflushed, prepare_flush};
use crate::{Jobs, WorkerConfig, now_ms};

pub(crate) use crate::flow::task;

/// How often the assignment notes (costs, shares) are recorded at most.
const NOTES_EVERY: Duration = Duration::from_secs(3);

/// Calls waiting for the owner; a handler waits for room beyond this.
const CALLS_QUEUED: usize = 256;

/// A `Work` handler's request to the term's flow.
enum Call {
    Report { worker: u64, slots: u32, serving: Vec<String>, results: Vec<v1::QueryResult>, reply: oneshot::Sender<u32> },
    Take { worker: u64, want: usize, reply: oneshot::Sender<Vec<v1::QueryTask>> },
}

/// What the owner hands the writer, done in this order.
enum Write {
    Assignments(BTreeMap<String, Vec<u64>>, BTreeMap<String, AssignmentNote>),
    Fail(String, String),
    /// The workers ready for each served model.
    ServeReady(BTreeMap<String, Vec<u64>>),
    /// The workers each served model is placed on.
    ServePlacement(BTreeMap<String, Vec<u64>>),
    /// Count these reports, then do the results' upkeep.
    Flush(BTreeMap<String, Vec<Pending>>),
}

fn not_leader() -> Status {
    Status::failed_precondition("this node is not the coordinator leader")
}

pub(crate) struct Leader {
    /// The calls of the term this node leads (`None`: it does not lead).
    calls: Mutex<Option<mpsc::Sender<Call>>>,
    /// Woken when there may be new work for long-polling workers.
    work: Notify,
    lease_ms: u64,
    /// Bytes of results waiting to be written at which no more queries
    /// are handed out (`[worker] results_mb`).
    max_held: usize,
    /// The owner checks the lease table after every event once asked to
    /// (the whole-cluster simulation does), keeping the first failure.
    audit: AtomicBool,
    violation: Mutex<Option<String>>,
}

impl Leader {
    pub(crate) fn new(config: &WorkerConfig) -> Leader {
        Leader {
            calls: Mutex::new(None),
            work: Notify::new(),
            lease_ms: config.lease_ms,
            max_held: config.results_bytes(),
            audit: AtomicBool::new(false),
            violation: Mutex::new(None),
        }
    }

    fn calls(&self) -> Option<mpsc::Sender<Call>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_calls(&self, calls: Option<mpsc::Sender<Call>>) {
        *self.calls.lock().unwrap_or_else(|e| e.into_inner()) = calls;
    }

    /// The first inconsistency found in a lease table since checking
    /// began (with the first call of this).
    pub(crate) fn check(&self) -> Result<(), String> {
        self.audit.store(true, Ordering::Relaxed);
        match self.violation.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn audit(&self, flow: &QueryFlow) {
        if self.audit.load(Ordering::Relaxed)
            && let Err(e) = flow.check()
        {
            self.violation.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    }

    /// A worker's call: take its results, hand it queries.
    pub(crate) async fn work(&self, req: v1::WorkRequest) -> Result<v1::WorkReply, Status> {
        let worker = req.worker;
        let calls = self.calls().ok_or_else(not_leader)?;
        let (reply, answer) = oneshot::channel();
        calls
            .send(Call::Report { worker, slots: req.slots, serving: req.serving, results: req.results, reply })
            .await
            .map_err(|_| not_leader())?;
        let accepted = answer.await.map_err(|_| not_leader())?;
        let want = req.want.min(64) as usize;
        let give_up = Instant::now() + Duration::from_millis(req.wait_ms.min(5000) as u64);
        loop {
            let notified = self.work.notified();
            let queries = if want == 0 {
                Vec::new()
            } else {
                let (reply, answer) = oneshot::channel();
                match calls.send(Call::Take { worker, want, reply }).await {
                    Ok(()) => answer.await.unwrap_or_default(),
                    // The term ended: nothing more to hand out here.
                    Err(_) => Vec::new(),
                }
            };
            if !queries.is_empty() || want == 0 || Instant::now() >= give_up || calls.is_closed() {
                return Ok(v1::WorkReply { queries, accepted });
            }
            let _ = tokio::time::timeout_at(give_up, notified).await;
        }
    }
}

/// The query flow, for each term this node leads the coordinator group.
pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    jobs.leader.set_calls(None);
    let leadership = jobs.coordinator.leadership();
    idunno_coordinator::leader_duty(leadership, shutdown, |term, stop| {
        let jobs = jobs.clone();
        async move {
            tracing::info!(term, "coordinator leader: running the query flow");
            lead(&jobs, stop).await;
            jobs.leader.set_calls(None);
            tracing::info!(term, "no longer the coordinator leader: the query flow stops");
        }
    })
    .await
}

/// Answer one handler's call.
fn answer(flow: &mut QueryFlow, call: Call) {
    match call {
        Call::Report { worker, slots, serving, results, reply } => {
            flow.worker_slots(worker, slots);
            flow.worker_serving(worker, serving);
            let _ = reply.send(flow.report(worker, results, now_ms()));
        }
        Call::Take { worker, want, reply } => {
            let _ = reply.send(flow.take(worker, want, now_ms()));
        }
    }
}

/// The owner's loop for one term: answer the workers' calls, follow the
/// state and the members, keep leases honest, and hand the writer the
/// assignment table, failed jobs and, every `flush_ms`, the reports to
/// count (one flush at a time).
async fn lead(jobs: &Arc<Jobs>, stop: CancellationToken) {
    let leader = &jobs.leader;
    let (calls, mut call_rx) = mpsc::channel(CALLS_QUEUED);
    leader.set_calls(Some(calls));
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let (back_tx, mut back_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(jobs.clone(), write_rx, back_tx));
    let mut term = Term {
        flow: QueryFlow::new(leader.lease_ms, leader.max_held),
        writes: write_tx,
        last_flush: Instant::now(),
        last_notes: Instant::now(),
        flushing: false,
        sent: None,
        ready: Resend::default(),
        placement: Resend::default(),
    };
    let mut state_rx = jobs.coordinator.watch_state();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(call) = call_rx.recv() => {
                answer(&mut term.flow, call);
                leader.audit(&term.flow);
                continue;
            }
            Some(unflushed) = back_rx.recv() => {
                let throttled = term.flow.throttled();
                term.flow.flush_returned();
                for (job, why) in unflushed {
                    term.flow.unflushed(job, why);
                }
                term.flushing = false;
                if throttled && !term.flow.throttled() {
                    // Workers waiting for queries may have them now.
                    leader.work.notify_waiters();
                }
                leader.audit(&term.flow);
                continue;
            }
            changed = state_rx.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
        term.look(jobs);
    }
    // Calls still queued get no answer: their handlers say this node no
    // longer leads.
    leader.set_calls(None);
    writer.abort();
}

/// What the owner keeps for one term.
struct Term {
    flow: QueryFlow,
    writes: mpsc::UnboundedSender<Write>,
    last_flush: Instant,
    last_notes: Instant,
    /// A flush is with the writer (one at a time).
    flushing: bool,
    /// The assignment table last handed to the writer.
    sent: Option<(BTreeMap<String, Vec<u64>>, BTreeMap<String, AssignmentNote>)>,
    /// The served models' ready workers and placement last sent.
    ready: Resend<BTreeMap<String, Vec<u64>>>,
    placement: Resend<BTreeMap<String, Vec<u64>>>,
}

/// What was last handed to the writer, and when: a value the state does
/// not show yet is sent once, and again after [`NOTES_EVERY`] if it
/// never shows (the write failed).
struct Resend<T> {
    sent: Option<(T, Instant)>,
}

impl<T> Default for Resend<T> {
    fn default() -> Self {
        Resend { sent: None }
    }
}

impl<T: Clone + PartialEq> Resend<T> {
    /// Whether `value`, which the state does not show, is to be sent now.
    fn due(&mut self, value: &T) -> bool {
        let due = self.sent.as_ref().is_none_or(|(v, at)| v != value || at.elapsed() >= NOTES_EVERY);
        if due {
            self.sent = Some((value.clone(), Instant::now()));
        }
        due
    }
}

/// The leader's placement of the served models over the `live` workers
/// (the rule is `idunno_scheduler::place`): a model's load is its file's
/// size, and the file's holders are preferred.
fn placement(state: &idunno_state::ClusterState, live: &[u64]) -> BTreeMap<String, Vec<u64>> {
    use idunno_scheduler::place::{Demand, place};
    let demands: Vec<Demand> = state
        .serving
        .models
        .values()
        .map(|s| {
            let file = state.namespace.files.get(&s.spec.model);
            let version = file.and_then(|f| f.versions.iter().find(|v| v.version == s.spec.model_version));
            Demand {
                name: s.spec.name.clone(),
                workers: s.workers as usize,
                bytes: version.map_or(0, |v| v.size),
                placed: s.placed.clone(),
                holders: version.map(|v| v.replicas.iter().copied().collect()).unwrap_or_default(),
            }
        })
        .collect();
    place(&demands, live)
}

impl Term {
    /// Feed the flow the state and the members as they are now, and hand
    /// the writer what follows from them.
    fn look(&mut self, jobs: &Jobs) {
        let state = jobs.coordinator.local_state();
        let running: BTreeMap<String, Job> = state
            .state
            .inference
            .jobs
            .iter()
            .filter(|(_, j)| j.state == JobState::Running)
            .map(|(n, j)| (n.clone(), j.clone()))
            .collect();
        let members: Vec<(u64, bool)> = jobs
            .membership
            .view()
            .members
            .iter()
            .map(|m| (m.identity.id.0, m.state.is_up()))
            .filter(|(id, _)| *id != jobs.id)
            .collect();
        let observed = self.flow.observe(running, &members, now_ms());
        jobs.leader.audit(&self.flow);
        for w in &observed.newly_gone {
            tracing::info!(worker = w, "worker gone: its queries go back to the queue");
        }
        if observed.requeued > 0 {
            tracing::info!(requeued = observed.requeued, "queries of dead workers requeued");
            jobs.metrics.requeued.inc_by(observed.requeued as u64);
            let gone: Vec<String> = observed.newly_gone.iter().map(u64::to_string).collect();
            let detail =
                format!("{} queries of node {} went back to the queue", observed.requeued, gone.join(", node "));
            let node = observed.newly_gone.first().copied().unwrap_or(0);
            jobs.coordinator.events().record(EventKind::QueriesRequeued, node, None, detail, None);
        }
        if observed.expired > 0 {
            tracing::warn!(expired = observed.expired, "query leases expired: requeued");
            jobs.metrics.expired.inc_by(observed.expired as u64);
        }
        if observed.wake {
            jobs.leader.work.notify_waiters();
        }
        let mut live: Vec<u64> = members.iter().filter(|(_, up)| *up).map(|(id, _)| *id).collect();
        live.push(jobs.id);
        // A draining node finishes what it holds but is given nothing new.
        live.retain(|id| !state.state.nodes.is_draining(*id));
        // The workers of a job change rarely; the measurements behind them
        // are recorded every few seconds at most.
        let table = self.flow.assignments(&live, jobs.id, jobs.config.slots, now_ms());
        let inference = &state.state.inference;
        let notes_due = table.1 != inference.assignment_notes && self.last_notes.elapsed() >= NOTES_EVERY;
        // Sent once (the state shows it only when the writer gets to it),
        // again after a while if it never shows.
        let new = self.sent.as_ref() != Some(&table) || self.last_notes.elapsed() >= NOTES_EVERY;
        if (table.0 != inference.assignments || notes_due) && new {
            self.last_notes = Instant::now();
            self.sent = Some(table.clone());
            let _ = self.writes.send(Write::Assignments(table.0, table.1));
        }
        // Served models: where they go, then which of those workers have
        // loaded them (a worker no longer placed takes no more requests,
        // even before it unloads the model).
        let serving = &state.state.serving.models;
        let placed = placement(&state.state, &live);
        let recorded = serving.iter().all(|(name, s)| placed.get(name) == Some(&s.placed));
        if !recorded && self.placement.due(&placed) {
            let _ = self.writes.send(Write::ServePlacement(placed.clone()));
        }
        let mut ready = self.flow.serve_ready(serving.keys(), &live);
        for (name, workers) in &mut ready {
            workers.retain(|w| placed.get(name).is_some_and(|on| on.contains(w)));
        }
        let recorded = serving.iter().all(|(name, s)| ready.get(name) == Some(&s.ready));
        if !recorded && self.ready.due(&ready) {
            let _ = self.writes.send(Write::ServeReady(ready));
        }
        for (job, error) in self.flow.take_failures() {
            tracing::warn!(%job, %error, "marking the job failed");
            let _ = self.writes.send(Write::Fail(job, error));
        }
        if !self.flushing && self.last_flush.elapsed() >= Duration::from_millis(jobs.config.flush_ms) {
            self.last_flush = Instant::now();
            self.flushing = true;
            let _ = self.writes.send(Write::Flush(self.flow.take_pending()));
        }
    }
}

/// The term's writer: does what the owner hands it, in order, and sends
/// back, after each flush, the reports it could not count.
async fn write(
    jobs: Arc<Jobs>,
    mut writes: mpsc::UnboundedReceiver<Write>,
    back: mpsc::UnboundedSender<Vec<(String, Unflushed)>>,
) {
    let mut upkeep = crate::compact::Upkeep::default();
    while let Some(w) = writes.recv().await {
        match w {
            Write::Assignments(assignments, notes) => {
                if let Err(e) = jobs.coordinator.apply(JobCommand::SetAssignments { assignments, notes }).await {
                    tracing::warn!(error = %e, "could not record assignments");
                }
            }
            Write::ServeReady(ready) => {
                if let Err(e) = jobs.coordinator.apply(ServeCommand::SetServeReady { ready }).await {
                    tracing::warn!(error = %e, "could not record which workers serve which model");
                }
            }
            Write::ServePlacement(placed) => {
                if let Err(e) = jobs.coordinator.apply(ServeCommand::SetServePlacement { placed }).await {
                    tracing::warn!(error = %e, "could not record where the served models are placed");
                }
            }
            Write::Fail(job, error) => {
                let _ = jobs.coordinator.apply(JobCommand::FailJob { job, error, now_ms: now_ms() }).await;
            }
            Write::Flush(pending) => {
                let unflushed = flush(&jobs, pending).await;
                let _ = back.send(unflushed);
                upkeep.run(&jobs).await;
            }
        }
    }
}

/// Write and count every job's finished queries; what could not be.
async fn flush(jobs: &Jobs, pending: BTreeMap<String, Vec<Pending>>) -> Vec<(String, Unflushed)> {
    let mut unflushed = Vec::new();
    for (job, items) in pending {
        if items.is_empty() {
            continue;
        }
        match flush_job(jobs, &job, items).await {
            Ok(n) => tracing::debug!(%job, queries = n, "counted"),
            Err(why) => {
                match &why {
                    // The results could not be written (a replica that
                    // died and is not yet known dead): nothing was
                    // counted, the reports wait for the next flush.
                    Unflushed::Retry(e, _) => {
                        tracing::warn!(%job, error = %e, "could not write results; retrying at the next flush")
                    }
                    Unflushed::Drop(e, _) => {
                        tracing::warn!(%job, error = %e, "could not count finished queries; they will run again")
                    }
                }
                unflushed.push((job, why));
            }
        }
    }
    unflushed
}
/// Write the rows of `items` as one segment, then count the queries with
/// the segment named in the same command: all or none.
async fn flush_job(jobs: &Jobs, job: &str, items: Vec<Pending>) -> Result<usize, Unflushed> {
    let prepared = {
        let state = jobs.coordinator.local_state();
        prepare_flush(job, state.state.inference.jobs.get(job), items)?
    };
    let Some(flush) = prepared else { return Ok(0) };
    let version = match jobs.sdfs.put(&flush.name, &flush.bytes).await {
        Ok(stored) => stored.version,
        Err(e) => return Err(Unflushed::Retry(format!("writing {}: {e}", flush.name), flush.items)),
    };
    let queries = || flush.items.iter().map(|p| p.query.clone()).collect::<Vec<_>>();
    let applied = match jobs.coordinator.apply(flush.command(version, now_ms())).await {
        Ok(out) => out.applied,
        // Not known to be committed: the segment may yet be counted, so
        // it stays (the sweep removes it if it never is).
        Err(e) => return Err(Unflushed::Drop(e.to_string(), queries())),
    };
    match applied {
        Ok(Reply::Completed { finished, .. }) => {
            if finished {
                tracing::info!(%job, "job done");
            }
            Ok(flush.items.len())
        }
        other => {
            crate::compact::delete(jobs, &flush.name).await;
            let why = match other {
                Ok(other) => format!("unexpected reply {other:?}"),
                Err(refusal) => refusal.to_string(),
            };
            Err(Unflushed::Drop(why, queries()))
        }
    }
}
