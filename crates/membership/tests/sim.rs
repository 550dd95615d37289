//! Several membership cores in one process on a simulated network and a
//! simulated clock: deterministic, no sockets, no sleeping. Each test is a
//! scenario with its expected outcome; a failure prints the seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use idunno_membership::{Effect, MemberState, MembershipEvent, NodeId, NodeIdentity, Swim, SwimConfig, SwimTimer};

/// Simulated milliseconds.
type Ms = u64;

enum Payload {
    Datagram { to: SocketAddr, data: Bytes },
    Timer { node: usize, life: u64, timer: SwimTimer },
}

struct Sim {
    now: Ms,
    /// One slot per node; `None` while crashed.
    nodes: Vec<Option<Swim>>,
    /// Bumped on every restart so timers of a previous life are dropped.
    lives: Vec<u64>,
    addrs: Vec<SocketAddr>,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    payloads: HashMap<u64, Payload>,
    seq: u64,
    /// Deterministic loss: a tiny LCG so the harness needs no rand.
    rng: u64,
    loss: f64,
    events: Vec<(Ms, usize, MembershipEvent)>,
    config: SwimConfig,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16))
}

impl Sim {
    fn new(n: usize, seed: u64, loss: f64) -> Self {
        let config = SwimConfig::default();
        let mut sim = Sim {
            now: 0,
            nodes: Vec::new(),
            lives: vec![0; n],
            addrs: (0..n).map(addr).collect(),
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            seq: 0,
            rng: seed.wrapping_mul(6364136223846793005).wrapping_add(1),
            loss,
            events: Vec::new(),
            config,
        };
        for i in 0..n {
            sim.nodes.push(None);
            sim.start(i, 1);
        }
        sim
    }

    fn start(&mut self, i: usize, generation: u64) {
        let id = NodeIdentity { id: NodeId(i as u64 + 1), addr: self.addrs[i], generation };
        let swim = Swim::new(id, &self.config, self.rng ^ i as u64).expect("valid config");
        self.lives[i] += 1;
        self.nodes[i] = Some(swim);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn push(&mut self, at: Ms, p: Payload) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.payloads.insert(self.seq, p);
    }

    fn flush(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let effects = node.drain_effects();
        for e in effects {
            match e {
                Effect::Send { to, data } => {
                    if self.loss > 0.0 && self.random() < self.loss {
                        continue;
                    }
                    self.push(self.now + 1, Payload::Datagram { to, data });
                }
                Effect::Schedule { after, timer } => {
                    let at = self.now + after.as_millis() as Ms;
                    let life = self.lives[i];
                    self.push(at, Payload::Timer { node: i, life, timer });
                }
                Effect::Event(ev) => self.events.push((self.now, i, ev)),
            }
        }
    }

    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Swim)) {
        if let Some(node) = self.nodes[i].as_mut() {
            f(node);
            self.flush(i);
        }
    }

    /// Advance simulated time to `until`, delivering everything due.
    fn run_until(&mut self, until: Ms) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            match self.payloads.remove(&seq) {
                Some(Payload::Datagram { to, data }) => {
                    if let Some(i) = self.addrs.iter().position(|a| *a == to) {
                        self.with_node(i, |n| {
                            let _ = n.handle_datagram(&data);
                        });
                    }
                }
                // A timer of a previous life of the node is dropped.
                Some(Payload::Timer { node, life, timer }) if self.lives[node] == life => {
                    self.with_node(node, |n| n.handle_timer(timer));
                }
                Some(Payload::Timer { .. }) | None => {}
            }
        }
        self.now = until;
    }

    /// Run until `pred` holds (checked every 10 ms) or `limit` passes.
    fn run_until_true(&mut self, limit: Ms, pred: impl Fn(&Sim) -> bool) -> Option<Ms> {
        let start = self.now;
        while self.now - start <= limit {
            if pred(self) {
                return Some(self.now - start);
            }
            let next = self.now + 10;
            self.run_until(next);
        }
        None
    }

    fn state_seen_by(&self, observer: usize, subject: usize) -> Option<MemberState> {
        let node = self.nodes[observer].as_ref()?;
        node.members().into_iter().find(|m| m.identity.addr == self.addrs[subject]).map(|m| m.state)
    }

    fn generation_seen_by(&self, observer: usize, subject: usize) -> Option<u64> {
        let node = self.nodes[observer].as_ref()?;
        node.members().into_iter().find(|m| m.identity.addr == self.addrs[subject]).map(|m| m.identity.generation)
    }

    fn all_alive_see(&self, subjects: &[usize], state: MemberState) -> bool {
        (0..self.nodes.len())
            .filter(|o| self.nodes[*o].is_some() && !subjects.contains(o))
            .all(|o| subjects.iter().all(|s| self.state_seen_by(o, *s) == Some(state)))
    }

    /// Everyone announces to node 0, then the group must converge.
    fn form_group(&mut self) -> Ms {
        for i in 1..self.nodes.len() {
            let to = self.addrs[0];
            self.with_node(i, |n| n.announce(to));
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.run_until_true(10_000, |s| {
            all.iter().all(|o| all.iter().all(|x| s.state_seen_by(*o, *x) == Some(MemberState::Alive)))
        })
        .expect("group formed")
    }
}

#[test]
fn five_members_converge() {
    for seed in 1..=5 {
        let mut sim = Sim::new(5, seed, 0.0);
        let took = sim.form_group();
        assert!(took <= 3_000, "seed {seed}: convergence took {took} ms");
        // Nobody declared anybody dead while forming.
        assert!(sim.events.iter().all(|(_, _, e)| matches!(e, MembershipEvent::Up(_))), "seed {seed}");
    }
}

#[test]
fn two_simultaneous_crashes_are_detected_by_every_survivor() {
    let mut worst = 0;
    for seed in 1..=10 {
        let mut sim = Sim::new(5, seed, 0.0);
        sim.form_group();
        sim.run_until(sim.now + 2_000);
        sim.crash(3);
        sim.crash(4);
        let took = sim
            .run_until_true(10_000, |s| s.all_alive_see(&[3, 4], MemberState::Dead))
            .unwrap_or_else(|| panic!("seed {seed}: crash not detected within 10 s"));
        worst = worst.max(took);
        let dead: Vec<_> = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))).collect();
        // 3 survivors each report 2 deaths, once.
        assert_eq!(dead.len(), 6, "seed {seed}: {dead:?}");
    }
    println!("worst simulated detection time of two crashes: {worst} ms");
    assert!(worst <= 4_000, "worst detection {worst} ms is over the 4 s target");
}

#[test]
fn graceful_leave_shows_left_not_dead() {
    for seed in 1..=5 {
        let mut sim = Sim::new(5, seed, 0.0);
        sim.form_group();
        sim.with_node(4, |n| n.leave());
        sim.crash(4); // the process exits right after leaving
        sim.run_until_true(5_000, |s| s.all_alive_see(&[4], MemberState::Left)).unwrap_or_else(|| {
            let seen: Vec<_> = (0..4).map(|o| sim.state_seen_by(o, 4)).collect();
            panic!("seed {seed}: leave not seen as left: {seen:?} events {:?}", sim.events)
        });
        assert!(
            !sim.events.iter().any(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))),
            "seed {seed}: a leave was reported as a death"
        );
        let lefts = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Left(_))).count();
        assert_eq!(lefts, 4, "seed {seed}: every survivor reports the leave once");
    }
}

#[test]
fn restarted_member_rejoins_with_higher_generation() {
    let mut sim = Sim::new(5, 7, 0.0);
    sim.form_group();
    sim.crash(2);
    sim.run_until_true(10_000, |s| s.all_alive_see(&[2], MemberState::Dead)).expect("detected");
    sim.start(2, 2);
    let to = sim.addrs[0];
    sim.with_node(2, |n| n.announce(to));
    sim.run_until_true(5_000, |s| {
        (0..5).all(|o| s.state_seen_by(o, 2) == Some(MemberState::Alive) && s.generation_seen_by(o, 2) == Some(2))
    })
    .expect("restarted node seen alive under generation 2 by all");
}

#[test]
fn restart_before_detection_replaces_the_old_life() {
    // Killed and back before anyone noticed: the new generation wins.
    let mut sim = Sim::new(4, 3, 0.0);
    sim.form_group();
    sim.crash(1);
    sim.start(1, 5);
    let to = sim.addrs[0];
    sim.with_node(1, |n| n.announce(to));
    sim.run_until_true(5_000, |s| (0..4).all(|o| s.generation_seen_by(o, 1) == Some(5)))
        .expect("new generation adopted");
}

#[test]
fn no_false_positive_at_five_percent_loss() {
    for seed in 1..=3 {
        let mut sim = Sim::new(5, seed, 0.05);
        sim.form_group();
        sim.events.clear();
        sim.run_until(sim.now + 300_000); // five simulated minutes
        let delivered: u64 = (0..5).map(|i| sim.nodes[i].as_ref().unwrap().stats().datagrams_in).sum();
        println!("seed {seed}: {delivered} datagrams delivered in 5 simulated minutes");
        assert!(delivered > 10_000, "the simulation did not run");
        let deaths: Vec<_> = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))).collect();
        assert!(deaths.is_empty(), "seed {seed}: false positives at 5% loss: {deaths:?}");
        // A member that refuted a suspicion in time must not be told it is
        // dead (it would throw away its identity and rejoin for nothing).
        let renewals: u64 = (0..5).map(|i| sim.nodes[i].as_ref().unwrap().stats().self_renewals).sum();
        assert_eq!(renewals, 0, "seed {seed}: members renewed their identity after refuting");
        assert!(sim.all_alive_see(&[], MemberState::Alive));
        for o in 0..5 {
            for s in 0..5 {
                assert_eq!(sim.state_seen_by(o, s), Some(MemberState::Alive), "seed {seed}: {o} sees {s}");
            }
        }
    }
}

#[test]
fn garbage_datagrams_change_nothing() {
    let mut sim = Sim::new(3, 11, 0.0);
    sim.form_group();
    let before: Vec<_> = (0..3).map(|i| sim.nodes[i].as_ref().unwrap().members()).collect();
    for junk in [&b""[..], b"\x00", b"hello, world", &[0xff; 1500][..], &[1u8; 64][..]] {
        let node = sim.nodes[0].as_mut().unwrap();
        // Junk is either refused outright or, when it happens to decode as
        // a header addressed to someone else, ignored.
        let _ = node.handle_datagram(junk);
        assert!(node.drain_effects().is_empty(), "junk {junk:?} produced effects");
    }
    let after: Vec<_> = (0..3).map(|i| sim.nodes[i].as_ref().unwrap().members()).collect();
    assert_eq!(before, after);
    assert!(sim.nodes[0].as_ref().unwrap().stats().datagrams_rejected >= 4);
}

#[test]
fn timing_that_cannot_work_is_refused() {
    let bad = SwimConfig { probe_rtt_ms: 500, probe_period_ms: 300, ..SwimConfig::default() };
    let id = NodeIdentity { id: NodeId(1), addr: addr(0), generation: 1 };
    let err = Swim::new(id, &bad, 1).err().expect("refused");
    assert!(err.to_string().contains("probe_rtt_ms"), "{err}");
    let _ = Duration::ZERO;
}
