//! A deterministic, seeded simulation of the query flow's logic: the real
//! dispatcher (`idunno-scheduler`) and the real replicated state machine
//! (`ClusterState::apply`), driven the way the leader and the workers
//! drive them, with seeded faults: workers crash (and their death is seen
//! late), the leader crashes (its dispatcher and unflushed reports are
//! lost; workers keep their results and resend them), replies are lost
//! (results sent twice), flushes fail. After every step: the state's and
//! the dispatcher's invariants, and no input position counted twice; after
//! the faults, the job must finish with every position counted once.
//!
//! Not simulated here: the network, Raft itself and SDFS (the real-process
//! tests in crates/cli/tests/jobs.rs kill real nodes for those).

use std::collections::BTreeMap;

use idunno_scheduler::{Dispatcher, DispatcherConfig, JobView, Query, Report};
use idunno_state::{ClusterState, DoneQuery, JobCommand, JobSpec, JobState, Reply};

const SAMPLES: u64 = 37;
const PASSES: u64 = 5;
const WORKERS: u64 = 5;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Worker {
    alive: bool,
    /// Leased queries not yet run.
    inbox: Vec<Query>,
    /// Finished queries not yet acknowledged by a leader.
    outbox: Vec<Query>,
}

struct Sim {
    rng: Rng,
    state: ClusterState,
    dispatcher: Dispatcher,
    pending: Vec<Query>,
    workers: BTreeMap<u64, Worker>,
    /// Workers dead but not yet seen dead by the leader.
    undetected: Vec<u64>,
    /// How many times each input position was counted.
    counted: Vec<u8>,
    now: u64,
    /// Faults and repeats that happened: (leader crashes, worker crashes,
    /// reports refused as repeats, failed flushes).
    events: (u32, u32, u32, u32),
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut state = ClusterState::default();
        let spec = JobSpec {
            name: "j".into(),
            model: "m".into(),
            inputs: "x".into(),
            batch_size: 4,
            samples: SAMPLES,
            passes: Some(PASSES),
            ..Default::default()
        };
        state.apply(JobCommand::AddJob { spec }).unwrap();
        state.apply(JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 0 }).unwrap();
        let workers = (1..=WORKERS).map(|w| (w, Worker { alive: true, ..Default::default() })).collect();
        let mut sim = Sim {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            state,
            dispatcher: Dispatcher::new(DispatcherConfig { lease_ms: 5_000 }),
            pending: Vec::new(),
            workers,
            undetected: Vec::new(),
            counted: vec![0; (SAMPLES * PASSES) as usize],
            now: 0,
            events: (0, 0, 0, 0),
        };
        sim.sync();
        sim
    }

    fn running(&self) -> bool {
        self.state.inference.jobs["j"].state == JobState::Running
    }

    fn sync(&mut self) {
        let j = &self.state.inference.jobs["j"];
        let views = if j.state == JobState::Running {
            vec![JobView {
                name: "j".into(),
                samples: SAMPLES,
                passes: j.spec.passes,
                batch_size: j.spec.batch_size,
                done: j.progress.done.clone(),
            }]
        } else {
            vec![]
        };
        self.dispatcher.sync(&views);
    }

    /// A worker's `Work` call: its results, then up to two new queries.
    fn work(&mut self, w: u64, lose_reply: bool) {
        let results = self.workers[&w].outbox.clone();
        for q in &results {
            if self.dispatcher.report(w, q, 1000, self.now) == Report::Accepted {
                self.pending.push(q.clone());
            } else {
                self.events.2 += 1;
            }
        }
        let room = 2usize.saturating_sub(self.workers[&w].inbox.len());
        let got = self.dispatcher.take(w, room, self.now);
        if lose_reply {
            // The leader acted, the worker never heard: it keeps its
            // results to send again and never runs the queries (their
            // leases expire).
            return;
        }
        let worker = self.workers.get_mut(&w).unwrap();
        worker.outbox.clear();
        worker.inbox.extend(got);
    }

    fn flush(&mut self, fail: bool) {
        let mut items = std::mem::take(&mut self.pending);
        if items.is_empty() {
            return;
        }
        if fail {
            // The results could not be written: kept for the next flush.
            self.pending = items;
            self.events.3 += 1;
            return;
        }
        items.sort_by_key(|q| q.start);
        let expect_done = self.state.inference.jobs["j"].progress.queries_done;
        let queries: Vec<DoneQuery> = items
            .iter()
            .map(|q| DoneQuery {
                start: q.start,
                len: q.len,
                latency_us: 1000,
                labeled: 0,
                correct: 0,
                loss_count: 0,
                loss_micro: 0,
            })
            .collect();
        let cmd =
            JobCommand::CompleteQueries { job: "j".into(), expect_done, queries, now_ms: self.now, segment: None };
        match self.state.apply(cmd) {
            Ok(Reply::Completed { .. }) => {
                for q in &items {
                    for p in q.start..q.start + q.len {
                        self.counted[p as usize] += 1;
                    }
                }
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(_) => self.dispatcher.abandon(&items),
        }
        self.sync();
    }

    fn leader_crash(&mut self) {
        self.events.0 += 1;
        self.pending.clear();
        self.dispatcher = Dispatcher::new(DispatcherConfig { lease_ms: 5_000 });
        self.sync();
        // The new leader's membership view: the dead it can see.
        for w in std::mem::take(&mut self.undetected) {
            self.dispatcher.worker_gone(w);
        }
    }

    fn step(&mut self, faults: bool) {
        self.now += 10;
        let roll = self.rng.below(100);
        let w = 1 + self.rng.below(WORKERS);
        match roll {
            0..=34 => {
                if self.workers[&w].alive {
                    let lose = faults && self.rng.below(20) == 0;
                    self.work(w, lose);
                }
            }
            35..=69 => {
                let worker = self.workers.get_mut(&w).unwrap();
                if worker.alive && !worker.inbox.is_empty() {
                    let q = worker.inbox.remove(0);
                    worker.outbox.push(q);
                }
            }
            70..=84 => {
                let fail = faults && self.rng.below(5) == 0;
                self.flush(fail);
            }
            85..=89 if faults => {
                let alive = self.workers.values().filter(|w| w.alive).count();
                let worker = self.workers.get_mut(&w).unwrap();
                if worker.alive && alive > 2 {
                    *worker = Worker::default();
                    self.undetected.push(w);
                    self.events.1 += 1;
                }
            }
            90..=93 => {
                // Membership sees the dead; a dead worker may come back.
                for d in std::mem::take(&mut self.undetected) {
                    self.dispatcher.worker_gone(d);
                }
                let worker = self.workers.get_mut(&w).unwrap();
                if !worker.alive && !self.undetected.contains(&w) {
                    worker.alive = true;
                }
            }
            94..=95 if faults => self.leader_crash(),
            _ => {
                self.dispatcher.expire(self.now);
            }
        }
    }

    fn check(&self, seed: u64) {
        self.state.check_invariants().unwrap_or_else(|e| panic!("seed {seed}: state: {e}"));
        self.dispatcher.check().unwrap_or_else(|e| panic!("seed {seed}: dispatcher: {e}"));
        if let Some(p) = self.counted.iter().position(|c| *c > 1) {
            panic!("seed {seed}: input position {p} counted twice");
        }
    }
}

#[test]
fn every_query_counts_once_through_crashes_and_repeats() {
    let mut totals = (0, 0, 0, 0);
    for seed in 1..=300u64 {
        let mut sim = Sim::new(seed);
        for _ in 0..1_500 {
            sim.step(true);
            sim.check(seed);
        }
        let progress_under_faults = sim.state.inference.jobs["j"].progress.inputs_done;
        // Liveness: without faults, and with the dead seen, the job ends.
        for w in std::mem::take(&mut sim.undetected) {
            sim.dispatcher.worker_gone(w);
        }
        for worker in sim.workers.values_mut() {
            worker.alive = true;
        }
        let mut steps = 0;
        while sim.running() {
            sim.step(false);
            sim.check(seed);
            steps += 1;
            assert!(
                steps < 50_000,
                "seed {seed}: the job did not finish; progress {:?}",
                sim.state.inference.jobs["j"].progress.done
            );
        }
        let p = &sim.state.inference.jobs["j"].progress;
        assert_eq!(sim.state.inference.jobs["j"].state, JobState::Done, "seed {seed}");
        assert_eq!(p.inputs_done, SAMPLES * PASSES, "seed {seed}");
        assert!(sim.counted.iter().all(|c| *c == 1), "seed {seed}: a position never counted");
        assert!(progress_under_faults > 0, "seed {seed}: no progress while faults happened");
        let e = sim.events;
        totals = (totals.0 + e.0, totals.1 + e.1, totals.2 + e.2, totals.3 + e.3);
    }
    // The faults did happen, many times over.
    println!("leader crashes, worker crashes, repeats dropped, failed flushes: {totals:?}");
    assert!(totals.0 > 300 && totals.1 > 300 && totals.2 > 300 && totals.3 > 300, "{totals:?}");
}
