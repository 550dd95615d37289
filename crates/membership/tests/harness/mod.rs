//! The simulated network and clock of the membership tests, shared with
//! `bench/swim-sim` (which includes this file): several membership cores
//! in one process, deterministic, no sockets, no sleeping.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

use bytes::Bytes;
use idunno_membership::{Effect, MemberState, MembershipEvent, NodeId, NodeIdentity, Swim, SwimConfig, SwimTimer};

/// Simulated milliseconds.
pub type Ms = u64;

pub enum Payload {
    Datagram { to: SocketAddr, data: Bytes },
    Timer { node: usize, life: u64, timer: SwimTimer },
}

pub struct Sim {
    pub now: Ms,
    /// One slot per node; `None` while crashed.
    pub nodes: Vec<Option<Swim>>,
    /// Bumped on every restart so timers of a previous life are dropped.
    pub lives: Vec<u64>,
    pub addrs: Vec<SocketAddr>,
    pub queue: BinaryHeap<Reverse<(Ms, u64)>>,
    pub payloads: HashMap<u64, Payload>,
    pub seq: u64,
    /// Deterministic loss: a tiny LCG so the harness needs no rand.
    pub rng: u64,
    pub loss: f64,
    pub events: Vec<(Ms, usize, MembershipEvent)>,
    pub config: SwimConfig,
}

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, (i >> 8) as u8, (i & 0xff) as u8], 7000))
}

impl Sim {
    pub fn new(n: usize, seed: u64, loss: f64) -> Self {
        Sim::with_config(n, seed, loss, SwimConfig::default())
    }

    pub fn with_config(n: usize, seed: u64, loss: f64, config: SwimConfig) -> Self {
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

    pub fn start(&mut self, i: usize, generation: u64) {
        let id = NodeIdentity { id: NodeId(i as u64 + 1), addr: self.addrs[i], generation };
        let swim = Swim::new(id, &self.config, self.rng ^ i as u64).expect("valid config");
        self.lives[i] += 1;
        self.nodes[i] = Some(swim);
    }

    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    pub fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn push(&mut self, at: Ms, p: Payload) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.payloads.insert(self.seq, p);
    }

    pub fn flush(&mut self, i: usize) {
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

    pub fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Swim)) {
        if let Some(node) = self.nodes[i].as_mut() {
            f(node);
            self.flush(i);
        }
    }

    /// Advance simulated time to `until`, delivering everything due.
    pub fn run_until(&mut self, until: Ms) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            match self.payloads.remove(&seq) {
                Some(Payload::Datagram { to, data }) => {
                    // Addresses are `addr(i)`: the index is in them.
                    let i = match to.ip() {
                        std::net::IpAddr::V4(ip) => (ip.octets()[2] as usize) << 8 | ip.octets()[3] as usize,
                        std::net::IpAddr::V6(_) => usize::MAX,
                    };
                    if i < self.addrs.len() && self.addrs[i] == to {
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
    pub fn run_until_true(&mut self, limit: Ms, pred: impl Fn(&Sim) -> bool) -> Option<Ms> {
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

    pub fn state_seen_by(&self, observer: usize, subject: usize) -> Option<MemberState> {
        self.nodes[observer].as_ref()?.state_of(self.addrs[subject])
    }

    pub fn generation_seen_by(&self, observer: usize, subject: usize) -> Option<u64> {
        let node = self.nodes[observer].as_ref()?;
        node.members().into_iter().find(|m| m.identity.addr == self.addrs[subject]).map(|m| m.identity.generation)
    }

    pub fn all_alive_see(&self, subjects: &[usize], state: MemberState) -> bool {
        (0..self.nodes.len())
            .filter(|o| self.nodes[*o].is_some() && !subjects.contains(o))
            .all(|o| subjects.iter().all(|s| self.state_seen_by(o, *s) == Some(state)))
    }

    /// How many live observers see every member alive.
    pub fn observers_seeing_all_alive(&self) -> usize {
        let n = self.nodes.len();
        self.nodes
            .iter()
            .flatten()
            .filter(|node| {
                let m = node.members();
                m.len() == n && m.iter().all(|m| m.state == MemberState::Alive)
            })
            .count()
    }

    /// Everyone announces to node 0, then the group must converge.
    pub fn form_group(&mut self) -> Ms {
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
