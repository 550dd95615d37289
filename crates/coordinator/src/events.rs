//! Putting what this node observes on the cluster's timeline
//! (`idunno_state::EventLog`).
//!
//! Any layer calls [`Recorder::record`]; it never waits and never fails
//! the caller (a full queue drops the event and counts it). One task per
//! node writes what the queue holds as `record_events` commands (idle
//! while there is nothing), retrying a batch that did not commit every
//! [`FLUSH_EVERY`]: every event has a key, so a retry that had in fact
//! committed adds nothing.
//!
//! Membership is observed by every node but proposed only by the leader:
//! each node keeps what it saw in the last [`RECENT`], and a node that
//! becomes leader proposes what it kept (the death of the leader it
//! replaces among it); keys leave out what the old leader already wrote.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idunno_membership::{MemberInfo, MemberState, MembershipHandle};
use idunno_state::{EventCommand, EventKind, MAX_EVENTS_PER_COMMAND, NewEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Coordinator;

/// How soon a write that did not commit is tried again.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long an event waits for others to share its write.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How long a membership observation waits for a leader to write it.
pub const RECENT: Duration = Duration::from_secs(60);
/// Events waiting to be written, at most.
const QUEUE: usize = 4096;
/// Refused-input events per node and second, at most (a client sending
/// garbage in a loop must not fill the timeline).
const REFUSALS_PER_SECOND: u64 = 2;

/// Where layers hand their events. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    by: u64,
    /// Distinguishes this process's keys from an earlier life's.
    life: u64,
    next: AtomicU64,
    tx: mpsc::Sender<NewEvent>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<NewEvent>>>,
    dropped: AtomicU64,
    refusal_second: AtomicU64,
    refusals_this_second: AtomicU64,
    /// Membership changes this node saw: joined, suspected, dead, left.
    observed: [AtomicU64; 4],
}

/// The membership changes [`Recorder::observed`] counts, in its order.
pub const OBSERVED: [(EventKind, &str); 4] = [
    (EventKind::MemberJoined, "joined"),
    (EventKind::MemberSuspected, "suspected"),
    (EventKind::MemberDead, "dead"),
    (EventKind::MemberLeft, "left"),
];

impl Recorder {
    pub fn new(by: u64, life: u64) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        Recorder {
            inner: Arc::new(RecorderInner {
                by,
                life,
                next: AtomicU64::new(1),
                tx,
                rx: std::sync::Mutex::new(Some(rx)),
                dropped: AtomicU64::new(0),
                refusal_second: AtomicU64::new(0),
                refusals_this_second: AtomicU64::new(0),
                observed: Default::default(),
            }),
        }
    }

    /// Put an event on the timeline (soon, not now). `key` names the
    /// observation when other nodes may record it too; `None` makes it
    /// unique.
    pub fn record(&self, kind: EventKind, node: u64, job: Option<&str>, detail: String, key: Option<String>) {
        let i = &self.inner;
        if kind == EventKind::InputRefused && !self.refusal_allowed() {
            i.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = key.unwrap_or_else(|| format!("{}/{}/{}", i.by, i.life, i.next.fetch_add(1, Ordering::Relaxed)));
        let mut detail = detail;
        idunno_state::truncate(&mut detail, idunno_state::MAX_DETAIL_BYTES);
        let event =
            NewEvent { at_ms: idunno_net::now_ms(), kind, node, job: job.map(str::to_string), detail, key, by: i.by };
        if i.tx.try_send(event).is_err() {
            i.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events that never reached the log's queue (full, or rate-limited).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// How many membership changes of each kind of [`OBSERVED`] this node
    /// saw (every node counts what it sees, leader or not).
    pub fn observed(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.inner.observed[i].load(Ordering::Relaxed))
    }

    fn count_observed(&self, kind: EventKind) {
        if let Some(i) = OBSERVED.iter().position(|(k, _)| *k == kind) {
            self.inner.observed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn refusal_allowed(&self) -> bool {
        let i = &self.inner;
        let second = idunno_net::now_ms() / 1000;
        if i.refusal_second.swap(second, Ordering::Relaxed) != second {
            i.refusals_this_second.store(0, Ordering::Relaxed);
        }
        i.refusals_this_second.fetch_add(1, Ordering::Relaxed) < REFUSALS_PER_SECOND
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<NewEvent>> {
        self.inner.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What this node last saw of each member: its generation, state and
/// SWIM incarnation.
pub type Seen = BTreeMap<u64, (u64, MemberState, u16)>;

/// The membership events between two views, as timeline events: a member
/// (or a new life of one) that is up is `joined`; a change to suspect,
/// dead or left is that. Keys name the member's life (and, for a
/// suspicion, the incarnation suspected), so every node observing the
/// same change makes the same key.
pub fn member_changes(seen: &mut Seen, members: &[MemberInfo], by: u64, now_ms: u64) -> Vec<NewEvent> {
    let mut out = Vec::new();
    for m in members {
        let (id, generation) = (m.identity.id.0, m.identity.generation);
        let before = seen.insert(id, (generation, m.state, m.swim_incarnation));
        let same_life = before.filter(|(g, _, _)| *g == generation);
        let (kind, key, what) = match (m.state, same_life) {
            (MemberState::Alive | MemberState::Suspect, None) => {
                (EventKind::MemberJoined, format!("joined/{id}/{generation}"), "joined")
            }
            (MemberState::Suspect, Some((_, s, inc))) if s != MemberState::Suspect || inc != m.swim_incarnation => (
                EventKind::MemberSuspected,
                format!("suspect/{id}/{generation}/{}", m.swim_incarnation),
                "is suspected",
            ),
            (MemberState::Dead, b) if b.is_none_or(|(_, s, _)| s != MemberState::Dead) => {
                (EventKind::MemberDead, format!("dead/{id}/{generation}"), "is dead")
            }
            (MemberState::Left, b) if b.is_none_or(|(_, s, _)| s != MemberState::Left) => {
                (EventKind::MemberLeft, format!("left/{id}/{generation}"), "left")
            }
            _ => continue,
        };
        let detail = format!("node {id} ({}) {what}", m.identity.addr);
        out.push(NewEvent { at_ms: now_ms, kind, node: id, job: None, detail, key, by });
    }
    out
}

impl Coordinator {
    /// The node's recorder: what its layers put on the timeline.
    pub fn events(&self) -> &Recorder {
        &self.events
    }

    /// Put one event on the timeline now, waiting for the commit: for an
    /// event that must come before what the caller's client does next
    /// (a job added, then started). Falls back to the queue if the write
    /// fails.
    pub async fn record_now(&self, kind: EventKind, node: u64, job: Option<&str>, detail: String) {
        let i = &self.events.inner;
        let key = format!("{}/{}/{}", i.by, i.life, i.next.fetch_add(1, Ordering::Relaxed));
        let mut detail = detail;
        idunno_state::truncate(&mut detail, idunno_state::MAX_DETAIL_BYTES);
        let event =
            NewEvent { at_ms: idunno_net::now_ms(), kind, node, job: job.map(str::to_string), detail, key, by: i.by };
        let cmd = EventCommand::RecordEvents { events: vec![event.clone()] };
        match tokio::time::timeout(Duration::from_secs(2), self.apply(cmd)).await {
            Ok(Ok(_)) => {}
            _ => {
                if i.tx.try_send(event).is_err() {
                    i.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Write recorded events and, while this node leads, what it observes
    /// of membership and its own election, until `shutdown`.
    pub fn spawn_events(
        self: &Arc<Self>,
        membership: MembershipHandle,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let Some(mut rx) = me.events.take_receiver() else {
                tracing::error!("the event recorder's task was started twice");
                return;
            };
            let by = me.id;
            let mut view = membership.watch();
            let mut leadership = me.leadership();
            let mut seen = Seen::new();
            // Membership observations, kept for a leader to write.
            let mut recent: VecDeque<(tokio::time::Instant, NewEvent)> = VecDeque::new();
            let mut pending: Vec<NewEvent> = Vec::new();
            let mut led = None;
            loop {
                let members = view.borrow_and_update().members.clone();
                let now = tokio::time::Instant::now();
                for e in member_changes(&mut seen, &members, by, idunno_net::now_ms()) {
                    me.events.count_observed(e.kind);
                    recent.push_back((now, e));
                }
                while recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RECENT) {
                    recent.pop_front();
                }
                let term = *leadership.borrow_and_update();
                if term.is_some() && term != led {
                    // Newly leading: every recent observation (keys leave
                    // out what is written; the old leader's death is
                    // among them), then the election.
                    pending.extend(recent.iter().map(|(_, e)| e.clone()));
                    let t = term.unwrap_or_default();
                    let detail = format!("node {by} leads (term {t})");
                    pending.push(NewEvent {
                        at_ms: idunno_net::now_ms(),
                        kind: EventKind::LeaderElected,
                        node: by,
                        job: None,
                        detail,
                        key: format!("leader/{t}"),
                        by,
                    });
                } else if term.is_some() {
                    let fresh = recent.iter().filter(|(t, _)| *t == now).map(|(_, e)| e.clone());
                    pending.extend(fresh);
                }
                led = term;
                while let Ok(e) = rx.try_recv() {
                    pending.push(e);
                }
                if !pending.is_empty() {
                    me.write_events(&mut pending).await;
                }
                // Idle until something happens: a write that failed is
                // tried again after FLUSH_EVERY. (A closed channel means
                // the node is stopping.)
                let retry = async {
                    if pending.is_empty() {
                        std::future::pending::<()>().await
                    } else {
                        tokio::time::sleep(FLUSH_EVERY).await
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = view.changed() => if r.is_err() { return },
                    r = leadership.changed() => if r.is_err() { return },
                    e = rx.recv() => match e {
                        // A moment for the events that come with it.
                        Some(e) => {
                            pending.push(e);
                            tokio::time::sleep(BATCH_WAIT).await;
                        }
                        None => return,
                    },
                    _ = retry => {}
                }
            }
        })
    }

    /// Write `pending` in batches; what did not commit stays for the next
    /// round (bounded: the oldest go first).
    async fn write_events(&self, pending: &mut Vec<NewEvent>) {
        while !pending.is_empty() {
            let n = pending.len().min(MAX_EVENTS_PER_COMMAND);
            let batch: Vec<NewEvent> = pending[..n].to_vec();
            let cmd = EventCommand::RecordEvents { events: batch };
            let written = tokio::time::timeout(Duration::from_secs(2), self.apply(cmd)).await;
            match written {
                Ok(Ok(o)) => {
                    if let Err(e) = o.applied {
                        // Checked by the recorder; should one be refused, the
                        // batch is dropped rather than retried for ever.
                        tracing::warn!(error = %e, "events refused");
                    }
                    pending.drain(..n);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "events not written yet");
                    break;
                }
                Err(_) => break,
            }
        }
        if pending.len() > QUEUE {
            let over = pending.len() - QUEUE;
            pending.drain(..over);
            self.events.inner.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_membership::{NodeId, NodeIdentity};

    fn member(id: u64, generation: u64, state: MemberState, inc: u16) -> MemberInfo {
        let addr = format!("127.0.0.1:{}", 7000 + id).parse().unwrap();
        MemberInfo {
            identity: NodeIdentity { id: NodeId(id), addr, generation },
            state,
            swim_incarnation: inc,
            is_self: false,
        }
    }

    fn keys(events: &[NewEvent]) -> Vec<String> {
        events.iter().map(|e| e.key.clone()).collect()
    }

    #[test]
    fn member_changes_name_each_life_and_change_once() {
        use MemberState::*;
        let mut seen = Seen::new();
        let e = member_changes(&mut seen, &[member(1, 10, Alive, 0), member(2, 20, Alive, 0)], 1, 5);
        assert_eq!(keys(&e), ["joined/1/10", "joined/2/20"]);
        // Nothing changed: nothing to say.
        assert!(member_changes(&mut seen, &[member(1, 10, Alive, 0), member(2, 20, Alive, 0)], 1, 6).is_empty());
        let e = member_changes(&mut seen, &[member(2, 20, Suspect, 0)], 1, 7);
        assert_eq!(keys(&e), ["suspect/2/20/0"]);
        assert_eq!(e[0].detail, "node 2 (127.0.0.1:7002) is suspected");
        // Refuted, suspected again under the next incarnation.
        assert!(member_changes(&mut seen, &[member(2, 20, Alive, 1)], 1, 8).is_empty());
        assert_eq!(keys(&member_changes(&mut seen, &[member(2, 20, Suspect, 1)], 1, 9)), ["suspect/2/20/1"]);
        let e = member_changes(&mut seen, &[member(2, 20, Dead, 1)], 1, 10);
        assert_eq!((keys(&e), e[0].kind, e[0].node), (vec!["dead/2/20".to_string()], EventKind::MemberDead, 2));
        assert!(member_changes(&mut seen, &[member(2, 20, Dead, 1)], 1, 11).is_empty());
        // Back under a new generation: a new life joined.
        assert_eq!(keys(&member_changes(&mut seen, &[member(2, 30, Alive, 0)], 1, 12)), ["joined/2/30"]);
        assert_eq!(keys(&member_changes(&mut seen, &[member(2, 30, Left, 0)], 1, 13)), ["left/2/30"]);
        // A member first seen dead (this node joined late) is said dead.
        assert_eq!(keys(&member_changes(&mut seen, &[member(3, 40, Dead, 0)], 1, 14)), ["dead/3/40"]);
    }
}
