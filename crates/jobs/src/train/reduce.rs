//! The all-reduce of a training group, on its rank 0.
//!
//! A *round* is one vector per rank (a step's gradients, or an
//! evaluation's counts); when every rank's has arrived, each caller gets
//! the element-wise sum. Rounds of one generation complete in order, so a
//! round at or below the last completed one means its sender is behind
//! the group (it restarted): it is told so, and asks for a new group.
//! A newer generation's first round drops everything of the older one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_rpc::v1;
use tokio::sync::watch;
use tonic::Status;

use super::{from_bytes, to_bytes};

/// The longest a round waits for the other ranks on the server side (the
/// caller's own deadline is usually shorter).
const ROUND_LIMIT: Duration = Duration::from_secs(120);

type Sum = Option<Arc<Vec<u8>>>;

struct Round {
    world: u32,
    sum: Vec<f32>,
    got: BTreeSet<u32>,
    done: watch::Sender<Sum>,
}

#[derive(Default)]
struct JobRounds {
    generation: u64,
    /// The last round that completed in this generation.
    completed: Option<u64>,
    open: BTreeMap<u64, Round>,
}

#[derive(Default)]
pub(crate) struct Reducer {
    jobs: Mutex<HashMap<String, JobRounds>>,
}

impl Reducer {
    /// Add one rank's vector to its round; the sum once the round is whole.
    pub(crate) async fn reduce(&self, req: v1::ReduceRequest) -> Result<Vec<u8>, Status> {
        let values = from_bytes(&req.values).map_err(Status::invalid_argument)?;
        let mut rx = self.join(&req, values)?;
        let whole = tokio::time::timeout(ROUND_LIMIT, rx.wait_for(|s| s.is_some())).await.map(|r| r.is_ok());
        let sum = rx.borrow().clone();
        match (sum, whole) {
            (Some(sum), _) => Ok(sum.to_vec()),
            (None, Err(_)) => {
                self.abandon(&req.job, req.generation, req.round);
                Err(Status::deadline_exceeded(format!(
                    "round {} of {} generation {}: not every rank sent its part within {} s",
                    req.round,
                    req.job,
                    req.generation,
                    ROUND_LIMIT.as_secs()
                )))
            }
            (None, Ok(_)) => Err(Status::aborted(format!(
                "round {} of {} generation {} was abandoned",
                req.round, req.job, req.generation
            ))),
        }
    }

    fn join(&self, req: &v1::ReduceRequest, values: Vec<f32>) -> Result<watch::Receiver<Sum>, Status> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let jr = jobs.entry(req.job.clone()).or_default();
        if req.generation < jr.generation {
            return Err(Status::failed_precondition(format!(
                "generation {} of {} is over (the group is at {})",
                req.generation, req.job, jr.generation
            )));
        }
        if req.generation > jr.generation {
            *jr = JobRounds { generation: req.generation, ..Default::default() };
        }
        if jr.completed.is_some_and(|c| req.round <= c) {
            return Err(Status::failed_precondition(format!(
                "round {} of {} is already done: rank {} is behind the group",
                req.round, req.job, req.rank
            )));
        }
        // In step, a group has one round open at a time: a member never
        // sends round r + 1 before round r is whole. Two open rounds mean
        // a member is out of step (it restarted from a checkpoint while
        // the others went on): every waiter is told at once, so the group
        // re-forms now instead of after a timeout.
        if jr.open.keys().any(|r| *r != req.round) {
            jr.open.clear();
            return Err(Status::failed_precondition(format!(
                "rank {} sent round {} of {} while another round is open: the group is out of step",
                req.rank, req.round, req.job
            )));
        }
        if req.world == 0 || req.rank >= req.world {
            return Err(Status::invalid_argument(format!("rank {} of a group of {}", req.rank, req.world)));
        }
        let round = jr.open.entry(req.round).or_insert_with(|| Round {
            world: req.world,
            sum: Vec::new(),
            got: BTreeSet::new(),
            done: watch::channel(None).0,
        });
        if round.world != req.world {
            return Err(Status::invalid_argument(format!(
                "rank {} says the group has {} members, others said {}",
                req.rank, req.world, round.world
            )));
        }
        if round.got.contains(&req.rank) {
            return Err(Status::already_exists(format!("rank {} already sent round {}", req.rank, req.round)));
        }
        if round.sum.is_empty() {
            round.sum = values;
        } else if round.sum.len() != values.len() {
            return Err(Status::invalid_argument(format!(
                "rank {} sent {} values, others {}",
                req.rank,
                values.len(),
                round.sum.len()
            )));
        } else {
            round.sum.iter_mut().zip(&values).for_each(|(s, v)| *s += v);
        }
        round.got.insert(req.rank);
        let rx = round.done.subscribe();
        if round.got.len() == round.world as usize {
            let sum = Arc::new(to_bytes(&round.sum));
            round.done.send_replace(Some(sum));
            jr.open.remove(&req.round);
            jr.completed = Some(req.round);
        }
        Ok(rx)
    }

    /// A round that timed out is dropped: its other waiters learn it was
    /// abandoned rather than wait on.
    fn abandon(&self, job: &str, generation: u64, round: u64) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jr) = jobs.get_mut(job)
            && jr.generation == generation
        {
            jr.open.remove(&round);
        }
    }

    /// Keep only the rounds of jobs `keep` says are still training.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).retain(|job, _| keep(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Reducer {
        fn is_open(&self, generation: u64, round: u64) -> bool {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.get("j").is_some_and(|jr| jr.generation == generation && jr.open.contains_key(&round))
        }
    }

    /// Until a spawned call has joined its round (5 s at most).
    async fn until_open(r: &Reducer, generation: u64, round: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !r.is_open(generation, round) {
            assert!(tokio::time::Instant::now() < deadline, "round {round} never opened");
            tokio::task::yield_now().await;
        }
    }

    fn req(round: u64, rank: u32, world: u32, v: &[f32]) -> v1::ReduceRequest {
        v1::ReduceRequest { job: "j".into(), generation: 1, round, rank, world, values: to_bytes(v) }
    }

    #[tokio::test]
    async fn every_rank_gets_the_sum_once_all_have_sent() {
        let r = Arc::new(Reducer::default());
        let mut calls = Vec::new();
        for rank in 0..3u32 {
            let r = r.clone();
            calls.push(tokio::spawn(async move { r.reduce(req(0, rank, 3, &[rank as f32, 1.0])).await }));
        }
        for c in calls {
            assert_eq!(from_bytes(&c.await.unwrap().unwrap()).unwrap(), vec![3.0, 3.0]);
        }
        // A rank that comes back with a finished round is behind.
        let e = r.reduce(req(0, 1, 3, &[0.0, 0.0])).await.unwrap_err();
        assert!(e.message().contains("behind"), "{e:?}");
    }

    #[tokio::test]
    async fn mismatches_are_refused() {
        let r = Arc::new(Reducer::default());
        let r2 = r.clone();
        let first = tokio::spawn(async move { r2.reduce(req(2, 0, 2, &[1.0])).await });
        until_open(&r, 1, 2).await;
        assert!(r.reduce(req(2, 0, 2, &[1.0])).await.unwrap_err().message().contains("already sent"));
        assert!(r.reduce(req(2, 1, 2, &[1.0, 2.0])).await.unwrap_err().message().contains("values"));
        assert!(r.reduce(req(2, 1, 3, &[1.0])).await.unwrap_err().message().contains("members"));
        assert!(r.reduce(req(2, 4, 2, &[1.0])).await.unwrap_err().message().contains("rank 4"));
        // A member out of step (another round while one is open) ends both
        // at once.
        let e = r.reduce(req(3, 1, 2, &[1.0])).await.unwrap_err();
        assert!(e.message().contains("out of step"), "{e:?}");
        assert!(first.await.unwrap().unwrap_err().message().contains("abandoned"));
        // A newer generation supersedes an open round.
        let r3 = r.clone();
        let open = tokio::spawn(async move { r3.reduce(req(5, 0, 2, &[1.0])).await });
        until_open(&r, 1, 5).await;
        let mut newer = req(0, 0, 1, &[5.0]);
        newer.generation = 2;
        assert_eq!(from_bytes(&r.reduce(newer).await.unwrap()).unwrap(), vec![5.0]);
        assert!(open.await.unwrap().unwrap_err().message().contains("abandoned"));
        let old = r.reduce(req(6, 0, 2, &[1.0])).await.unwrap_err();
        assert!(old.message().contains("is over"), "{old:?}");
    }
}
