//! The sans-IO membership core: foca's SWIM plus the bits idunno adds on top
//! (graceful-leave notices and a member view that remembers the dead).
//!
//! **Invariant:** nothing here touches sockets, tokio or a clock. Inputs are
//! datagrams, fired timers and commands; outputs are [`Effect`]s that the
//! driver (see `driver.rs`) or a test harness carries out.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use foca::{BroadcastHandler, Codec, Foca, Invalidates, Notification, PostcardCodec, Runtime, State};

use crate::codec::BoundedCodec;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SwimConfig};
use crate::identity::{NodeId, NodeIdentity};

/// A timer foca asked for; hand it back through [`Swim::handle_timer`].
pub type SwimTimer = foca::Timer<NodeIdentity>;

/// How one member looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    /// Someone failed to reach it; it is still counted as alive until it
    /// refutes or the suspicion times out.
    Suspect,
    /// Declared dead by the group (crash, partition).
    Dead,
    /// Announced its own departure.
    Left,
}

impl MemberState {
    /// Alive or suspect: a member work may still be sent to.
    pub fn is_up(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// One row of the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub identity: NodeIdentity,
    pub state: MemberState,
    /// SWIM's incarnation within this generation: bumped each time the
    /// member refutes a suspicion.
    pub swim_incarnation: u16,
    /// This row is the node that built the list.
    pub is_self: bool,
}

/// What later layers (SDFS repair, scheduler, coordinator group) react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member is alive: it joined, or came back under a new generation.
    Up(NodeIdentity),
    /// The group declared a member dead.
    Dead(NodeIdentity),
    /// A member left gracefully.
    Left(NodeIdentity),
}

/// What the core asks the outside world to do.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Send one datagram.
    Send { to: SocketAddr, data: Bytes },
    /// Call [`Swim::handle_timer`] with `timer` after `after`.
    Schedule { after: Duration, timer: SwimTimer },
    /// Tell subscribers.
    Event(MembershipEvent),
}

/// Counters for observability and for the false-positive benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    pub datagrams_in: u64,
    /// Datagrams foca refused (garbage, wrong size, stale identity...).
    pub datagrams_rejected: u64,
    /// How many times this node saw a member declared dead.
    pub dead_events: u64,
    /// How many times this node was itself declared dead and rejoined.
    pub self_renewals: u64,
}

/// A member refused to start: nothing is running.
#[derive(Debug, thiserror::Error)]
pub enum SwimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A datagram was not a valid SWIM message for us; nothing changed.
    #[error("bad datagram: {0}")]
    BadDatagram(String),
}

/// The wire form of a graceful-leave notice, gossiped as a foca custom
/// broadcast so that it spreads even to members the leaver never talks to.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LeaveNotice {
    identity: NodeIdentity,
}

/// Dissemination key: a notice about the same generation replaces the one
/// already queued.
#[derive(Clone, Debug)]
struct LeaveKey(NodeIdentity);

impl Invalidates for LeaveKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0.addr == other.0.addr && self.0.generation >= other.0.generation
    }
}

/// Receives leave notices inside foca. foca owns the handler and offers no
/// way to reach it afterwards, so what it learns goes to a shared set that
/// [`Swim`] reads; only the one task that owns the `Swim` ever locks it.
struct LeaveNotices {
    left: Arc<Mutex<HashSet<NodeIdentity>>>,
}

impl BroadcastHandler<NodeIdentity> for LeaveNotices {
    type Key = LeaveKey;
    type Error = postcard::Error;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<LeaveKey>, postcard::Error> {
        let notice: LeaveNotice = postcard::from_bytes(data)?;
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        if left.insert(notice.identity.clone()) { Ok(Some(LeaveKey(notice.identity))) } else { Ok(None) }
    }
}

/// Collects foca's callbacks as effects.
struct Collect<'a> {
    effects: &'a mut Vec<Effect>,
    notifications: &'a mut Vec<foca::OwnedNotification<NodeIdentity>>,
    /// "You are dead" messages sent during this call: (index in
    /// `effects`, addressee). See [`Swim::with_runtime`] for why.
    turn_undead: Vec<(usize, NodeIdentity)>,
}

impl Runtime<NodeIdentity> for Collect<'_> {
    fn notify(&mut self, notification: Notification<'_, NodeIdentity>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        let header = <PostcardCodec as Codec<NodeIdentity>>::decode_header(&mut PostcardCodec, data);
        if matches!(header, Ok(foca::Header { message: foca::Message::TurnUndead, .. })) {
            self.turn_undead.push((self.effects.len(), to.clone()));
        }
        self.effects.push(Effect::Send { to: to.addr, data: Bytes::copy_from_slice(data) });
    }

    fn submit_after(&mut self, timer: SwimTimer, after: Duration) {
        self.effects.push(Effect::Schedule { after, timer });
    }
}

/// One node's view of the group.
pub struct Swim {
    foca: Foca<NodeIdentity, BoundedCodec, SmallRng, LeaveNotices>,
    /// The highest generation a datagram may name (see `codec.rs`).
    generation_ceiling: Arc<std::sync::atomic::AtomicU64>,
    /// Identities known to have left on purpose (ours included once we leave).
    left: Arc<Mutex<HashSet<NodeIdentity>>>,
    /// Effects produced since the last [`Swim::drain_effects`].
    effects: Vec<Effect>,
    /// Reused buffer for foca's notifications.
    notifications: Vec<foca::OwnedNotification<NodeIdentity>>,
    /// Members whose departure was already reported, so each leave is
    /// announced to subscribers once however the news arrives.
    reported_left: HashSet<NodeIdentity>,
    /// Set once `leave` ran: the node answers nothing any more.
    leaving: bool,
    stats: SwimStats,
    /// The configuration as given (for a group of up to 7 members), and the
    /// group size class the running one is scaled for (see [`scaled`]).
    base: foca::Config,
    scaled_for: u32,
}

/// `base` for a group of `members` (this node included): a bigger group
/// needs each update told more times to reach everyone, and gives a
/// suspect longer to hear of its suspicion and refute it (Lifeguard's
/// rule: both grow with the logarithm of the group's size). Up to 7
/// members it is `base` itself. Measured with 1,000 simulated members
/// (bench/swim_sim): the defaults left some deaths unseen for a minute
/// and declared live members dead at 5% loss.
pub fn scaled(base: &foca::Config, members: usize) -> foca::Config {
    let factor = ((members as f64 + 1.0).log2() / 3.0).max(1.0);
    let mut c = base.clone();
    let transmissions = (base.max_transmissions.get() as f64 * factor).ceil().min(255.0) as u8;
    c.max_transmissions = std::num::NonZeroU8::new(transmissions.max(1)).unwrap_or(base.max_transmissions);
    c.suspect_to_down_after = base.suspect_to_down_after.mul_f64(factor);
    c
}

impl Swim {
    /// A member that knows nobody yet. `seed` drives every random choice
    /// (probe order, gossip targets), so a test can replay a run.
    pub fn new(identity: NodeIdentity, config: &SwimConfig, seed: u64) -> Result<Self, SwimError> {
        let left = Arc::new(Mutex::new(HashSet::new()));
        let (codec, generation_ceiling) = BoundedCodec::new();
        let base = config.to_foca()?;
        let foca = Foca::with_custom_broadcast(
            identity,
            base.clone(),
            SmallRng::seed_from_u64(seed),
            codec,
            LeaveNotices { left: left.clone() },
        );
        Ok(Self {
            foca,
            generation_ceiling,
            left,
            effects: Vec::new(),
            notifications: Vec::new(),
            reported_left: HashSet::new(),
            leaving: false,
            stats: SwimStats::default(),
            base,
            scaled_for: 0,
        })
    }

    /// Follow the group's size: a new configuration whenever its size
    /// crosses a power of two.
    fn rescale(&mut self) {
        let members = self.foca.num_members() + 1;
        let class = (members as u32 + 1).next_power_of_two().trailing_zeros();
        if class != self.scaled_for {
            let c = scaled(&self.base, members);
            tracing::debug!(
                members,
                transmissions = c.max_transmissions.get(),
                suspicion_ms = c.suspect_to_down_after.as_millis() as u64,
                "SWIM scaled to the group's size"
            );
            if self.foca.set_config(c).is_ok() {
                self.scaled_for = class;
            }
        }
    }

    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Ask the node at `introducer` to let us in. Any address works: foca
    /// accepts an announce addressed to any identity at its address.
    pub fn announce(&mut self, introducer: SocketAddr) {
        if self.leaving {
            return;
        }
        let dst = NodeIdentity { id: NodeId(0), addr: introducer, generation: 0 };
        let r = self.with_runtime(|foca, rt| foca.announce(dst, rt));
        if let Err(e) = r {
            tracing::warn!(%introducer, error = %e, "announce failed");
        }
    }

    /// A datagram arrived. Garbage is refused without changing anything.
    pub fn handle_datagram(&mut self, data: &[u8]) -> Result<(), SwimError> {
        self.stats.datagrams_in += 1;
        let r = self.with_runtime(|foca, rt| foca.handle_data(data, rt));
        r.map_err(|e| {
            self.stats.datagrams_rejected += 1;
            SwimError::BadDatagram(e.to_string())
        })
    }

    /// The time now, as far as generations from the wire are concerned:
    /// none may be more than a day ahead of it (see `codec.rs`). Until
    /// called, only generations a renewal could overflow are refused.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.generation_ceiling.store(crate::codec::ceiling_at(now_ms), std::sync::atomic::Ordering::Relaxed);
    }

    /// A datagram was refused before reaching the protocol (wrong
    /// cluster, or it did not verify under the cluster secret).
    pub fn count_rejected(&mut self) {
        self.stats.datagrams_in += 1;
        self.stats.datagrams_rejected += 1;
    }

    /// A timer scheduled through [`Effect::Schedule`] fired.
    pub fn handle_timer(&mut self, timer: SwimTimer) {
        let r = self.with_runtime(|foca, rt| foca.handle_timer(timer, rt));
        if let Err(e) = r {
            tracing::debug!(error = %e, "timer");
        }
    }

    /// Leave gracefully: tell the group we are going (so it shows us as
    /// "left", not "dead"), then stop answering.
    pub fn leave(&mut self) {
        if self.leaving {
            return;
        }
        // The handler records us in `left` as it accepts the notice.
        let me = self.identity().clone();
        match postcard::to_stdvec(&LeaveNotice { identity: me }) {
            Ok(notice) => {
                if let Err(e) = self.foca.add_broadcast(&notice) {
                    tracing::warn!(error = %e, "leave notice");
                }
            }
            Err(e) => tracing::warn!(error = %e, "leave notice encoding"),
        }
        // Two rounds reach up to twice `indirect_probes` members directly;
        // the rest learn it from them by piggy-backing.
        for _ in 0..2 {
            let r = self.with_runtime(|foca, rt| foca.broadcast(rt));
            if let Err(e) = r {
                tracing::warn!(error = %e, "leave broadcast");
            }
        }
        let r = self.with_runtime(|foca, rt| foca.leave_cluster(rt));
        if let Err(e) = r {
            tracing::warn!(error = %e, "leave_cluster");
        }
        self.leaving = true;
    }

    /// How this node sees the member at `addr` (the newest identity
    /// there), without building the whole member list.
    pub fn state_of(&self, addr: SocketAddr) -> Option<MemberState> {
        if addr == self.identity().addr {
            return Some(if self.leaving { MemberState::Left } else { MemberState::Alive });
        }
        let m = self.foca.iter_membership_state().filter(|m| m.id().addr == addr).max_by_key(|m| m.id().generation)?;
        Some(match m.state() {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Down if self.lock_left().contains(m.id()) => MemberState::Left,
            State::Down => MemberState::Dead,
        })
    }

    /// Every member this node knows of, itself included, sorted by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let left = self.lock_left();
        let mut rows: BTreeMap<(NodeId, SocketAddr), MemberInfo> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if left.contains(id) => MemberState::Left,
                State::Down => MemberState::Dead,
            };
            let row = MemberInfo { identity: id.clone(), state, swim_incarnation: m.incarnation(), is_self: false };
            rows.insert((id.id, id.addr), row);
        }
        let me = self.identity().clone();
        rows.insert(
            (me.id, me.addr),
            MemberInfo {
                state: if self.leaving { MemberState::Left } else { MemberState::Alive },
                identity: me,
                swim_incarnation: 0,
                is_self: true,
            },
        );
        rows.into_values().collect()
    }

    /// Take the effects produced so far, in order.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn lock_left(&self) -> std::sync::MutexGuard<'_, HashSet<NodeIdentity>> {
        self.left.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one foca call with a collecting runtime, then turns its
    /// notifications into membership events.
    fn with_runtime<R>(
        &mut self,
        f: impl FnOnce(&mut Foca<NodeIdentity, BoundedCodec, SmallRng, LeaveNotices>, &mut Collect<'_>) -> R,
    ) -> R {
        let left_before = self.lock_left().clone();
        let mut rt =
            Collect { effects: &mut self.effects, notifications: &mut self.notifications, turn_undead: Vec::new() };
        let r = f(&mut self.foca, &mut rt);
        // foca 2.0 sends "you are dead" when a suspicion timer fires even if
        // the suspect refuted in time (its check fails, the courtesy message
        // goes out anyway), and the addressee then throws its identity away
        // and rejoins. Such a message to a member we still count as alive is
        // dropped; the genuine ones, to members we declared dead, are kept.
        let mut bogus: Vec<usize> = rt
            .turn_undead
            .iter()
            .filter(|(_, to)| self.foca.iter_members().any(|m| m.id() == to))
            .map(|(i, _)| *i)
            .collect();
        bogus.sort_unstable_by(|a, b| b.cmp(a));
        for i in bogus {
            self.effects.remove(i);
        }
        let notifications = std::mem::take(&mut self.notifications);
        for n in notifications {
            self.on_notification(n);
        }
        // A leave notice about a member we had already seen go down turns
        // its "dead" into "left"; one about a live member is followed by
        // foca's own down notification, handled above.
        let newly_left: Vec<NodeIdentity> = self.lock_left().difference(&left_before).cloned().collect();
        for id in newly_left {
            let already_down = self.foca.iter_membership_state().any(|m| m.id() == &id && m.state() == State::Down);
            if already_down && id != *self.identity() {
                self.report_left(id);
            }
        }
        self.rescale();
        r
    }

    fn report_left(&mut self, id: NodeIdentity) {
        if self.reported_left.insert(id.clone()) {
            tracing::info!(member = ?id, "member left");
            self.effects.push(Effect::Event(MembershipEvent::Left(id)));
        }
    }

    fn on_notification(&mut self, n: foca::OwnedNotification<NodeIdentity>) {
        use foca::OwnedNotification as N;
        match n {
            N::MemberUp(id) => {
                tracing::info!(member = ?id, "member up");
                self.effects.push(Effect::Event(MembershipEvent::Up(id)));
            }
            N::MemberDown(id) => {
                if self.lock_left().contains(&id) {
                    self.report_left(id);
                } else {
                    tracing::warn!(member = ?id, "member dead");
                    self.stats.dead_events += 1;
                    self.effects.push(Effect::Event(MembershipEvent::Dead(id)));
                }
            }
            N::Rename(old, new) => tracing::info!(?old, ?new, "member renamed"),
            N::Rejoin(me) => {
                self.stats.self_renewals += 1;
                tracing::warn!(identity = ?me, "declared dead while alive; rejoined under a new generation");
            }
            N::Active => tracing::info!("joined the group"),
            N::Idle => tracing::info!("no other live member known"),
            N::Defunct => tracing::warn!("this node was declared dead"),
        }
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;

    #[test]
    fn small_groups_keep_the_configuration_and_big_ones_scale_it() {
        let base = SwimConfig::default().to_foca().unwrap();
        for n in [1, 5, 7] {
            let c = scaled(&base, n);
            assert_eq!(
                (c.max_transmissions, c.suspect_to_down_after),
                (base.max_transmissions, base.suspect_to_down_after)
            );
        }
        let c = scaled(&base, 1000);
        assert_eq!(c.max_transmissions.get(), 27);
        assert_eq!(c.suspect_to_down_after.as_millis(), 2990);
        assert_eq!(c.probe_period, base.probe_period, "the probe period cannot change at run time");
        assert_eq!(scaled(&base, usize::MAX).max_transmissions.get(), 171, "64 doublings: 8 × 64 / 3");
    }
}
