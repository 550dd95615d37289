//! The cluster's timeline: what happened, in the order the log agreed on,
//! the same on every node. Bounded: the oldest events make room for new
//! ones.
//!
//! Events come from two places. Nodes record what they observe (a member
//! dying, an election, a repair) with [`EventCommand::RecordEvents`]; every
//! such event carries a key, and an event whose key the log already holds
//! is left out, so several nodes (or a retry) recording the same
//! observation put it in once. Job life-cycle events (started, stopped,
//! done, failed) are written by the state machine itself when it applies
//! the command that made the change, so they are exactly where the change
//! is in the log.

use serde::{Deserialize, Serialize};

use crate::{Applied, Refusal, Reply};

/// How many events the log keeps.
pub const EVENTS_KEPT: usize = 4096;
/// At most this many events in one command.
pub const MAX_EVENTS_PER_COMMAND: usize = 256;
/// The longest detail and key, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;
pub const MAX_KEY_BYTES: usize = 256;

/// What kind of thing happened. The wire name is the snake case one
/// (`member_dead`), which `idunno events` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MemberJoined,
    MemberSuspected,
    MemberDead,
    MemberLeft,
    LeaderElected,
    VoterAdded,
    VoterRemoved,
    QueriesRequeued,
    FileUnderReplicated,
    FileRepaired,
    TrainingRegrouped,
    JobAdded,
    JobStarted,
    JobStopped,
    JobDone,
    JobFailed,
    JobRemoved,
    InputRefused,
    NodeDraining,
}

impl EventKind {
    pub const ALL: &[EventKind] = &[
        EventKind::MemberJoined,
        EventKind::MemberSuspected,
        EventKind::MemberDead,
        EventKind::MemberLeft,
        EventKind::LeaderElected,
        EventKind::VoterAdded,
        EventKind::VoterRemoved,
        EventKind::QueriesRequeued,
        EventKind::FileUnderReplicated,
        EventKind::FileRepaired,
        EventKind::TrainingRegrouped,
        EventKind::JobAdded,
        EventKind::JobStarted,
        EventKind::JobStopped,
        EventKind::JobDone,
        EventKind::JobFailed,
        EventKind::JobRemoved,
        EventKind::InputRefused,
        EventKind::NodeDraining,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberSuspected => "member_suspected",
            EventKind::MemberDead => "member_dead",
            EventKind::MemberLeft => "member_left",
            EventKind::LeaderElected => "leader_elected",
            EventKind::VoterAdded => "voter_added",
            EventKind::VoterRemoved => "voter_removed",
            EventKind::QueriesRequeued => "queries_requeued",
            EventKind::FileUnderReplicated => "file_under_replicated",
            EventKind::FileRepaired => "file_repaired",
            EventKind::TrainingRegrouped => "training_regrouped",
            EventKind::JobAdded => "job_added",
            EventKind::JobStarted => "job_started",
            EventKind::JobStopped => "job_stopped",
            EventKind::JobDone => "job_done",
            EventKind::JobFailed => "job_failed",
            EventKind::JobRemoved => "job_removed",
            EventKind::InputRefused => "input_refused",
            EventKind::NodeDraining => "node_draining",
        }
    }
}

/// An event as a node records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The recording node's clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    /// The node the event is about (the member that died, the new leader,
    /// the worker whose queries went back to the queue); 0 when none.
    pub node: u64,
    /// The job it concerns, if any.
    #[serde(default)]
    pub job: Option<String>,
    pub detail: String,
    /// What makes it the same observation when several nodes record it
    /// (`member_dead/3/1700000000000`): an event whose key is in the log
    /// is left out.
    pub key: String,
    /// The node that recorded it.
    pub by: u64,
}

/// An event in the log: numbered in log order from 1. (Its fields are
/// [`NewEvent`]'s, spelled out: snapshots are postcard, which cannot
/// write a flattened struct.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    pub node: u64,
    pub job: Option<String>,
    pub detail: String,
    pub key: String,
    pub by: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// The newest [`EVENTS_KEPT`] events, oldest first.
    #[serde(deserialize_with = "crate::bounded::vector")]
    pub events: imbl::Vector<Event>,
    /// The number the next event gets.
    pub next_seq: u64,
}

/// Adding to the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EventCommand {
    /// Record these events, leaving out those whose key is in the log
    /// (or earlier in the same command). All are checked first: one bad
    /// event refuses the command.
    RecordEvents { events: Vec<NewEvent> },
}

impl EventCommand {
    pub const OPS: &[&str] = &["record_events"];
}

impl EventLog {
    pub fn apply(&mut self, cmd: EventCommand) -> Applied {
        match cmd {
            EventCommand::RecordEvents { events } => {
                if events.len() > MAX_EVENTS_PER_COMMAND {
                    return Err(Refusal::BadEvent(format!(
                        "{} events in one command; at most {MAX_EVENTS_PER_COMMAND}",
                        events.len()
                    )));
                }
                for e in &events {
                    check(e)?;
                }
                for e in events {
                    if !self.holds_key(&e.key) {
                        self.push(e);
                    }
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Whether an event with this key is in the log.
    pub fn holds_key(&self, key: &str) -> bool {
        // Newest first: a repeated observation is usually recent.
        self.events.iter().rev().any(|e| e.key == key)
    }

    /// Append one event (the state machine's own, or a checked one).
    pub(crate) fn push(&mut self, event: NewEvent) {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        let NewEvent { at_ms, kind, node, job, detail, key, by } = event;
        self.events.push_back(Event { seq, at_ms, kind, node, job, detail, key, by });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// The time of the newest event (for events of commands that carry no
    /// time of their own).
    pub fn last_ms(&self) -> u64 {
        self.events.last().map_or(0, |e| e.at_ms)
    }

    /// Events numbered after `seq`, oldest first, at most `limit`.
    pub fn after(&self, seq: u64, limit: usize) -> Vec<Event> {
        let newer = self.events.iter().filter(|e| e.seq > seq);
        newer.take(limit).cloned().collect()
    }

    pub fn check(&self) -> Result<(), String> {
        if self.events.len() > EVENTS_KEPT {
            return Err(format!("{} events kept; at most {EVENTS_KEPT}", self.events.len()));
        }
        let mut last = 0;
        for e in &self.events {
            if e.seq <= last || e.seq >= self.next_seq {
                return Err(format!("event {} out of order (after {last}, next {})", e.seq, self.next_seq));
            }
            last = e.seq;
        }
        Ok(())
    }
}

fn check(e: &NewEvent) -> Result<(), Refusal> {
    if e.key.is_empty() || e.key.len() > MAX_KEY_BYTES {
        return Err(Refusal::BadEvent(format!("an event's key must be 1 to {MAX_KEY_BYTES} bytes")));
    }
    if e.detail.len() > MAX_DETAIL_BYTES {
        return Err(Refusal::BadEvent(format!("an event's detail must be at most {MAX_DETAIL_BYTES} bytes")));
    }
    if e.job.as_ref().is_some_and(|j| j.len() > MAX_KEY_BYTES) {
        return Err(Refusal::BadEvent(format!("an event's job name must be at most {MAX_KEY_BYTES} bytes")));
    }
    Ok(())
}
