//! The seeded fault schedule: crashes and restarts, partitions and slow
//! links, the coordinator leader among the targets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{Registry, SimConfig, host_name};

/// The fault schedule.
pub(super) struct Faults {
    rng: SmallRng,
    nodes: u64,
    fault_time: Duration,
    pub(super) started_at: Option<Duration>,
    next: Duration,
    /// Crashed nodes and when they come back.
    down: BTreeMap<u64, Duration>,
    /// Partitioned or slowed nodes and when that ends.
    cut: BTreeMap<u64, Duration>,
    slow: BTreeMap<u64, Duration>,
    pub(super) log: Vec<String>,
}

impl Faults {
    pub(super) fn new(config: &SimConfig) -> Faults {
        Faults {
            rng: SmallRng::seed_from_u64(config.seed ^ 0x5eed_fa17),
            nodes: config.nodes,
            fault_time: config.fault_time,
            started_at: None,
            next: Duration::ZERO,
            down: BTreeMap::new(),
            cut: BTreeMap::new(),
            slow: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    pub(super) fn note(&mut self, now: Duration, what: String) {
        tracing::info!(at = now.as_secs_f64(), "{what}");
        self.log.push(format!("{:8.3} s  {what}", now.as_secs_f64()));
    }

    /// Advance the schedule; true once the faults are over and every node
    /// is back, whole and reachable.
    pub(super) fn step(&mut self, sim: &mut turmoil::Sim<'_>, registry: &Registry, now: Duration) -> bool {
        let Some(started) = self.started_at else { return false };
        // Ends of earlier faults; all of them once the fault time is over.
        let over = now >= started + self.fault_time;
        let due = |m: &BTreeMap<u64, Duration>| -> Vec<u64> {
            m.iter().filter(|&(_, until)| over || now >= *until).map(|(id, _)| *id).collect()
        };
        for id in due(&self.down) {
            self.down.remove(&id);
            sim.bounce(host_name(id));
            self.note(now, format!("restart n{id}"));
        }
        for id in due(&self.cut) {
            self.cut.remove(&id);
            for p in (1..=self.nodes).filter(|&p| p != id) {
                sim.repair(host_name(id), host_name(p));
            }
            self.note(now, format!("heal n{id}'s partition"));
        }
        for id in due(&self.slow) {
            self.slow.remove(&id);
            for p in (1..=self.nodes).filter(|&p| p != id) {
                sim.set_link_latency(host_name(id), host_name(p), Duration::from_millis(1));
            }
            self.note(now, format!("n{id}'s links back to normal"));
        }
        if over {
            return true;
        }
        if now < self.next {
            return false;
        }
        self.next = now + Duration::from_millis(self.rng.random_range(1500..4000));
        // At most two nodes out (crashed or cut off) at once: three of
        // five still make a quorum of the group if they hold its voters.
        let out: BTreeSet<u64> = self.down.keys().chain(self.cut.keys()).copied().collect();
        let candidates: Vec<u64> = (1..=self.nodes).filter(|id| !out.contains(id)).collect();
        let room = 2usize.saturating_sub(out.len());
        let leader = current_leader(registry).filter(|l| candidates.contains(l));
        match self.rng.random_range(0..10) {
            // Crash the coordinator leader.
            0..=2 if room >= 1 && leader.is_some() => {
                let id = leader.unwrap_or_default();
                self.crash(sim, registry, now, &[id], "the leader");
            }
            // Crash two nodes at once.
            3..=4 if room >= 2 => {
                let a = candidates[self.rng.random_range(0..candidates.len())];
                let rest: Vec<u64> = candidates.iter().copied().filter(|&c| c != a).collect();
                let b = rest[self.rng.random_range(0..rest.len())];
                self.crash(sim, registry, now, &[a, b], "two at once");
            }
            // Crash one node.
            5..=6 if room >= 1 => {
                let id = candidates[self.rng.random_range(0..candidates.len())];
                self.crash(sim, registry, now, &[id], "one");
            }
            // Cut one node off from the others.
            7 if room >= 1 => {
                let id = candidates[self.rng.random_range(0..candidates.len())];
                for p in (1..=self.nodes).filter(|&p| p != id) {
                    sim.partition(host_name(id), host_name(p));
                }
                let until = now + Duration::from_millis(self.rng.random_range(1000..5000));
                self.cut.insert(id, until);
                self.note(now, format!("partition n{id} from the others until {:.3} s", until.as_secs_f64()));
            }
            // Slow one node's links.
            _ => {
                let id = 1 + self.rng.random_range(0..self.nodes);
                let latency = Duration::from_millis(self.rng.random_range(50..400));
                for p in (1..=self.nodes).filter(|&p| p != id) {
                    sim.set_link_latency(host_name(id), host_name(p), latency);
                }
                let until = now + Duration::from_millis(self.rng.random_range(1000..6000));
                self.slow.insert(id, until);
                self.note(
                    now,
                    format!("slow n{id}'s links to {} ms until {:.3} s", latency.as_millis(), until.as_secs_f64()),
                );
            }
        }
        false
    }

    pub(super) fn crash(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        registry: &Registry,
        now: Duration,
        ids: &[u64],
        why: &str,
    ) {
        for &id in ids {
            sim.crash(host_name(id));
            registry.borrow_mut().remove(&id);
            let until = now + Duration::from_millis(self.rng.random_range(1000..8000));
            self.down.insert(id, until);
            self.note(now, format!("crash n{id} ({why}) until {:.3} s", until.as_secs_f64()));
        }
    }
}

fn current_leader(registry: &Registry) -> Option<u64> {
    let reg = registry.borrow();
    reg.iter()
        .filter(|(_, v)| v.metrics.borrow().state == ServerState::Leader)
        .max_by_key(|(_, v)| v.metrics.borrow().current_term)
        .map(|(id, _)| *id)
}
