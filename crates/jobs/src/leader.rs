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
//! One `QueryFlow` per term, behind a mutex held for short, non-async
//! sections only (the `Work` handlers and the term's loop); the loop is
//! the one writer of results and commands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use idunno_rpc::v1;
use idunno_state::{Job, JobCommand, JobState, Reply};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::flow::{Pending, QueryFlow, Unflushed, prepare_flush};
use crate::{Jobs, WorkerConfig, now_ms};

pub(crate) use crate::flow::task;

/// How often the assignment notes (costs, shares) are recorded at most.
const NOTES_EVERY: Duration = Duration::from_secs(3);

pub(crate) struct Leader {
    /// The flow of the term this node leads (`None`: it does not lead).
    flow: Mutex<Option<QueryFlow>>,
    /// Woken when there may be new work for long-polling workers.
    work: Notify,
    lease_ms: u64,
}

impl Leader {
    pub(crate) fn new(config: &WorkerConfig) -> Leader {
        Leader { flow: Mutex::new(None), work: Notify::new(), lease_ms: config.lease_ms }
    }

    fn lock(&self) -> MutexGuard<'_, Option<QueryFlow>> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self, active: bool) {
        *self.lock() = active.then(|| QueryFlow::new(self.lease_ms));
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        self.lock().as_ref().map_or(Ok(()), QueryFlow::check)
    }

    /// A worker's call: take its results, hand it queries.
    pub(crate) async fn work(&self, req: v1::WorkRequest) -> Result<v1::WorkReply, Status> {
        let worker = req.worker;
        let accepted = match self.lock().as_mut() {
            Some(flow) => flow.report(worker, req.results, now_ms()),
            None => return Err(Status::failed_precondition("this node is not the coordinator leader")),
        };
        let want = req.want.min(64) as usize;
        let give_up = Instant::now() + Duration::from_millis(req.wait_ms.min(5000) as u64);
        loop {
            let notified = self.work.notified();
            let queries = self.lock().as_mut().map(|f| f.take(worker, want, now_ms())).unwrap_or_default();
            if !queries.is_empty() || want == 0 || Instant::now() >= give_up {
                return Ok(v1::WorkReply { queries, accepted });
            }
            let _ = tokio::time::timeout_at(give_up, notified).await;
        }
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
        let members: Vec<(u64, bool)> = jobs
            .membership
            .view()
            .members
            .iter()
            .map(|m| (m.identity.id.0, m.state.is_up()))
            .filter(|(id, _)| *id != jobs.id)
            .collect();
        let mut live: Vec<u64> = members.iter().filter(|(_, up)| *up).map(|(id, _)| *id).collect();
        live.push(jobs.id);
        let (observed, (assignments, notes), failures) = {
            let mut guard = leader.lock();
            let Some(flow) = guard.as_mut() else { return };
            let observed = flow.observe(running, &members, now_ms());
            (observed, flow.assignments(&live, jobs.config.slots, now_ms()), flow.take_failures())
        };
        for w in &observed.newly_gone {
            tracing::info!(worker = w, "worker gone: its queries go back to the queue");
        }
        if observed.requeued > 0 {
            tracing::info!(requeued = observed.requeued, "queries of dead workers requeued");
        }
        if observed.expired > 0 {
            tracing::warn!(expired = observed.expired, "query leases expired: requeued");
        }
        if observed.wake {
            leader.work.notify_waiters();
        }
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
            flush(jobs).await;
            upkeep.run(jobs).await;
        }
    }
}

/// Write and count every job's finished queries.
async fn flush(jobs: &Jobs) {
    let pending = match jobs.leader.lock().as_mut() {
        Some(flow) => flow.take_pending(),
        None => return,
    };
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
                if let Some(flow) = jobs.leader.lock().as_mut() {
                    flow.unflushed(job, why);
                }
            }
        }
    }
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
