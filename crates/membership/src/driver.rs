//! The one task that owns a [`Swim`] core: it feeds it datagrams from a UDP
//! socket, fires its timers, carries out its effects, and publishes the
//! member view (a `watch`) and membership events (a `broadcast`) that the
//! rest of the node reads. Protocol decisions stay in `core.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idunno_net::UdpSocket;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::{Effect, MemberInfo, MembershipEvent, Swim, SwimStats, SwimTimer};

/// The wire protocol this build speaks. Every datagram carries it after
/// the cluster tag; a node speaking another one is refused (its datagrams
/// are dropped and it is told, once in a while, which protocol we speak),
/// so two versions that cannot understand each other never merge.
/// Raised when a change to any node-to-node message is not compatible
/// (`docs/deploy.md`, upgrades).
pub const PROTOCOL: u8 = 1;

/// In the protocol byte's place: "I speak the protocol in the next byte,
/// not yours" (sent back to a datagram of another protocol).
const FOREIGN_NOTICE: u8 = 0xff;

/// What readers see: the member list and counters, as of the last event.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub members: Vec<MemberInfo>,
    pub stats: SwimStats,
}

enum Command {
    Announce(SocketAddr),
    Leave(oneshot::Sender<()>),
}

/// The driver is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("membership task has stopped")]
pub struct Stopped;

/// Cheap to clone; how every other layer talks to membership.
#[derive(Clone)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
    events: broadcast::Sender<MembershipEvent>,
    /// Datagrams sent. Kept out of the view: a send must not wake the
    /// view's watchers (a joining node announces on every change of the
    /// view, and a count that changes with each send would feed it).
    sent: Arc<AtomicU64>,
    /// Peers heard speaking another protocol: address → their protocol.
    foreign: Arc<std::sync::Mutex<HashMap<SocketAddr, u8>>>,
}

impl MembershipHandle {
    /// Nodes heard speaking another wire protocol than this one's
    /// ([`PROTOCOL`]), with theirs.
    pub fn foreign_protocols(&self) -> Vec<(SocketAddr, u8)> {
        let f = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().map(|(a, p)| (*a, *p)).collect()
    }

    /// The member list as of now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// SWIM datagrams this node sent (probes, acks, gossip).
    pub fn datagrams_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// A receiver that wakes whenever the view changes.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Membership events from now on (up, dead, left). A slow subscriber
    /// that falls behind gets `Lagged` and should re-read [`Self::view`].
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Send one announce to `introducer`; see `join` for the waiting.
    pub async fn announce(&self, introducer: SocketAddr) -> Result<(), Stopped> {
        self.commands.send(Command::Announce(introducer)).await.map_err(|_| Stopped)
    }

    /// Join the group through `introducer`: announce every 300 ms until
    /// another live member shows up, or give up after `deadline`.
    pub async fn join(&self, introducer: SocketAddr, deadline: std::time::Duration) -> Result<bool, Stopped> {
        let give_up = Instant::now() + deadline;
        let mut view = self.watch();
        loop {
            if view.borrow().members.iter().any(|m| !m.is_self && m.state.is_up()) {
                return Ok(true);
            }
            if Instant::now() >= give_up {
                return Ok(false);
            }
            self.announce(introducer).await?;
            let wait = std::time::Duration::from_millis(300).min(give_up - Instant::now());
            let _ = tokio::time::timeout(wait, view.changed()).await;
        }
    }

    /// Leave gracefully; returns once the notices are on the wire.
    pub async fn leave(&self) -> Result<(), Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Leave(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Knobs of the driver itself (protocol timing lives in `SwimConfig`).
#[derive(Clone, Debug, Default)]
pub struct DriverOptions {
    /// Every datagram starts with this tag ([`cluster_tag`] of the cluster
    /// name); datagrams with another tag are dropped, so two clusters on
    /// one network (or a dead node's address reused by another cluster)
    /// never merge.
    pub cluster_tag: u64,
    /// Drop this fraction of outgoing datagrams: packet-loss injection for
    /// benchmarks and tests. 0 in production.
    pub loss: f64,
    pub seed: u64,
    /// The cluster secret's keys: every datagram is sealed with the
    /// primary and must open under one of them (`idunno_auth::seal`).
    /// `None`: plaintext, for a loopback-only cluster without a secret.
    pub keys: Option<idunno_auth::KeysCell>,
    /// The protocol to speak: [`PROTOCOL`] (another value only in tests
    /// of mixed versions).
    pub protocol: Option<u8>,
}

/// Start the driver on a bound socket. It runs until `shutdown` fires.
pub fn spawn(
    socket: UdpSocket,
    swim: Swim,
    options: DriverOptions,
    shutdown: CancellationToken,
) -> (MembershipHandle, tokio::task::JoinHandle<()>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (view_tx, view_rx) = watch::channel(View { members: swim.members(), stats: swim.stats() });
    let (events_tx, _) = broadcast::channel(1024);
    let sent = Arc::new(AtomicU64::new(0));
    let foreign = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let handle = MembershipHandle {
        commands: cmd_tx,
        view: view_rx,
        events: events_tx.clone(),
        sent: sent.clone(),
        foreign: foreign.clone(),
    };
    let driver = Driver {
        socket: Arc::new(socket),
        swim,
        timers: BinaryHeap::new(),
        timer_payloads: HashMap::new(),
        next_timer: 0,
        rng: SmallRng::seed_from_u64(options.seed ^ 0x5eed),
        replay: idunno_auth::seal::ReplayGuard::default(),
        options,
        view: view_tx,
        events: events_tx,
        sent,
        foreign,
        noticed: HashMap::new(),
    };
    let task = tokio::spawn(driver.run(cmd_rx, shutdown));
    (handle, task)
}

struct Driver {
    socket: Arc<UdpSocket>,
    swim: Swim,
    /// Due times of pending foca timers, earliest first; the payload sits in
    /// `timer_payloads` under the same sequence number.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, SwimTimer>,
    next_timer: u64,
    /// Only for loss injection.
    rng: SmallRng,
    options: DriverOptions,
    /// Sealed datagrams already received (replay protection).
    replay: idunno_auth::seal::ReplayGuard,
    view: watch::Sender<View>,
    events: broadcast::Sender<MembershipEvent>,
    sent: Arc<AtomicU64>,
    foreign: Arc<std::sync::Mutex<HashMap<SocketAddr, u8>>>,
    /// When each peer of another protocol was last told ours (at most
    /// one notice per peer per [`NOTICE_EVERY`]; bounded).
    noticed: HashMap<SocketAddr, Instant>,
}

const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Peers of other protocols remembered at once.
const FOREIGN_KEPT: usize = 256;

impl Driver {
    fn protocol(&self) -> u8 {
        self.options.protocol.unwrap_or(PROTOCOL)
    }

    /// A datagram of our cluster in another protocol, or a notice that a
    /// peer speaks another one: log it once per peer, answer with ours now
    /// and then, change nothing else.
    async fn foreign(&mut self, from: SocketAddr, byte: u8, rest: &[u8]) {
        self.swim.count_rejected();
        let theirs = if byte == FOREIGN_NOTICE {
            match rest.first() {
                Some(p) => *p,
                None => return,
            }
        } else {
            byte
        };
        let ours = self.protocol();
        if theirs == ours {
            return;
        }
        {
            let mut f = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
            if f.len() < FOREIGN_KEPT && f.insert(from, theirs) != Some(theirs) {
                tracing::warn!(
                    peer = %from,
                    theirs,
                    ours,
                    "a node speaks another wire protocol; it is refused. Run one version across the cluster \
                     (see docs/deploy.md, upgrades)"
                );
            }
        }
        if byte == FOREIGN_NOTICE {
            return;
        }
        let now = Instant::now();
        if self.noticed.get(&from).is_some_and(|t| now < *t + NOTICE_EVERY) {
            return;
        }
        if self.noticed.len() >= FOREIGN_KEPT {
            self.noticed.retain(|_, t| now < *t + NOTICE_EVERY);
        }
        if self.noticed.len() < FOREIGN_KEPT {
            self.noticed.insert(from, now);
            let mut notice = self.options.cluster_tag.to_be_bytes().to_vec();
            notice.extend([FOREIGN_NOTICE, ours]);
            let _ = self.socket.send_to(&notice, from).await;
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 2048 + 9];
        loop {
            let next_due = self.timers.peek().map(|Reverse((t, _))| *t);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let tagged = n > 8 && buf[..8] == self.options.cluster_tag.to_be_bytes();
                        if tagged && buf[8] != self.protocol() {
                            let (byte, rest) = (buf[8], buf[9..n].to_vec());
                            self.foreign(from, byte, &rest).await;
                        } else {
                            self.receive(&buf[..n], from);
                        }
                    }
                    // ICMP errors from a peer that went away surface here.
                    Err(e) => tracing::trace!(error = %e, "udp recv"),
                },
                _ = sleep_until_opt(next_due) => {
                    let now = Instant::now();
                    while let Some(Reverse((due, seq))) = self.timers.peek().copied() {
                        if due > now {
                            break;
                        }
                        self.timers.pop();
                        if let Some(t) = self.timer_payloads.remove(&seq) {
                            self.swim.handle_timer(t);
                        }
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Announce(addr)) => self.swim.announce(addr),
                    Some(Command::Leave(reply)) => {
                        self.swim.leave();
                        self.apply_effects().await;
                        let _ = reply.send(());
                    }
                    None => break,
                },
            }
            self.apply_effects().await;
        }
    }

    /// One datagram: its cluster tag and protocol, then (with a secret)
    /// its seal, then the protocol. Nothing that fails a check is decoded.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        let tag = self.options.cluster_tag.to_be_bytes();
        if datagram.len() < 9 || datagram[..8] != tag || datagram[8] != self.protocol() {
            tracing::debug!(%from, "datagram from another cluster dropped");
            self.swim.count_rejected();
            return;
        }
        let body = &datagram[9..];
        let now = idunno_net::now_ms();
        self.swim.set_now_ms(now);
        let r = match &self.options.keys {
            None => self.swim.handle_datagram(body),
            Some(keys) => match keys.current().swim.open(&tag, body, now, &mut self.replay) {
                Ok(payload) => self.swim.handle_datagram(&payload),
                Err(e) => {
                    tracing::debug!(%from, error = %e, "datagram refused");
                    self.swim.count_rejected();
                    return;
                }
            },
        };
        if let Err(e) = r {
            tracing::debug!(%from, error = %e, "datagram refused");
        }
    }

    async fn apply_effects(&mut self) {
        let mut events = Vec::new();
        for effect in self.swim.drain_effects() {
            match effect {
                Effect::Send { to, data } => {
                    if self.options.loss > 0.0 && self.rng.random::<f64>() < self.options.loss {
                        continue;
                    }
                    let tag = self.options.cluster_tag.to_be_bytes();
                    let mut framed = Vec::with_capacity(9 + idunno_auth::seal::OVERHEAD + data.len());
                    framed.extend_from_slice(&tag);
                    framed.push(self.protocol());
                    match &self.options.keys {
                        None => framed.extend_from_slice(&data),
                        Some(keys) => {
                            let nonce: [u8; 24] = rand::random();
                            framed.extend_from_slice(&keys.current().swim.seal(
                                &tag,
                                &data,
                                idunno_net::now_ms(),
                                nonce,
                            ));
                        }
                    }
                    match self.socket.send_to(&framed, to).await {
                        Ok(_) => {
                            self.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::debug!(%to, error = %e, "udp send"),
                    }
                }
                Effect::Schedule { after, timer } => {
                    let seq = self.next_timer;
                    self.next_timer += 1;
                    self.timers.push(Reverse((Instant::now() + after, seq)));
                    self.timer_payloads.insert(seq, timer);
                }
                Effect::Event(ev) => events.push(ev),
            }
        }
        // The view first: a subscriber woken by an event must find the view
        // already showing it.
        let members = self.swim.members();
        let stats = self.swim.stats();
        self.view.send_if_modified(|v| {
            if v.members != members || v.stats != stats {
                v.members = members;
                v.stats = stats;
                true
            } else {
                false
            }
        });
        for ev in events {
            // No subscriber is fine: nobody cares yet.
            let _ = self.events.send(ev);
        }
    }
}

/// The datagram tag of a cluster name (64-bit FNV-1a: stable across
/// versions and machines, which is all a tag needs).
pub fn cluster_tag(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
