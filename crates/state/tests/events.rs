//! The timeline: recorded events are kept once per key, in log order,
//! bounded; job state changes put themselves on it.

mod common;

use common::*;
use idunno_state::{
    ClusterState, Command, EVENTS_KEPT, EventCommand, EventKind, JobCommand, JobState, NewEvent, Refusal, Reply,
};

fn event(key: &str, at_ms: u64) -> NewEvent {
    NewEvent {
        at_ms,
        kind: EventKind::MemberDead,
        node: 3,
        job: None,
        detail: "member 3 dead".into(),
        key: key.into(),
        by: 1,
    }
}

fn record(events: Vec<NewEvent>) -> Command {
    EventCommand::RecordEvents { events }.into()
}

fn kinds(st: &ClusterState) -> Vec<(u64, EventKind)> {
    st.events.events.iter().map(|e| (e.seq, e.kind)).collect()
}

#[test]
fn an_observation_recorded_by_several_nodes_is_kept_once() {
    let mut second = event("dead/3/7", 20);
    second.by = 2;
    let st = run(vec![
        (record(vec![event("dead/3/7", 10)]), Ok(Reply::Done)),
        (record(vec![second.clone(), event("dead/4/7", 30)]), Ok(Reply::Done)),
        // Twice in one command counts once too.
        (record(vec![event("x", 40), event("x", 41)]), Ok(Reply::Done)),
    ]);
    let kept: Vec<(u64, &str, u64)> = st.events.events.iter().map(|e| (e.seq, e.key.as_str(), e.at_ms)).collect();
    assert_eq!(kept, vec![(1, "dead/3/7", 10), (2, "dead/4/7", 30), (3, "x", 40)]);
    assert_eq!(st.events.after(1, 10).len(), 2);
    assert_eq!(st.events.after(1, 1)[0].seq, 2);
}

#[test]
fn a_bad_event_refuses_the_whole_command() {
    let mut long = event("k2", 1);
    long.detail = "x".repeat(idunno_state::MAX_DETAIL_BYTES + 1);
    let too_many = (0..idunno_state::MAX_EVENTS_PER_COMMAND + 1).map(|i| event(&format!("k{i}"), 1)).collect();
    let refused = |what: &str| Err(Refusal::BadEvent(what.into()));
    run(vec![
        (record(vec![event("k1", 1), long]), refused("an event's detail must be at most 1024 bytes")),
        (record(vec![event("", 1)]), refused("an event's key must be 1 to 256 bytes")),
        (record(too_many), refused("257 events in one command; at most 256")),
    ]);
}

#[test]
fn the_log_keeps_the_newest_events() {
    let mut st = ClusterState::default();
    for chunk in 0..(EVENTS_KEPT / 256 + 2) {
        let events = (0..256).map(|i| event(&format!("k{chunk}/{i}"), (chunk * 256 + i) as u64)).collect();
        st.apply(record(events)).unwrap();
    }
    st.check_invariants().unwrap();
    assert_eq!(st.events.events.len(), EVENTS_KEPT);
    let total = ((EVENTS_KEPT / 256 + 2) * 256) as u64;
    assert_eq!(st.events.events.back().unwrap().seq, total);
    assert_eq!(st.events.events.front().unwrap().seq, total - EVENTS_KEPT as u64 + 1);
}

#[test]
fn job_state_changes_are_on_the_timeline_at_the_commands_time() {
    let st = run(vec![
        (job("j", 10), Ok(Reply::Done)),
        (JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 100 }.into(), Ok(Reply::Done)),
        // Refused: not on the timeline.
        (
            JobCommand::SetJobState { job: "j".into(), state: JobState::Added, now_ms: 150 }.into(),
            Err(Refusal::BadTransition { job: "j".into(), from: JobState::Running, to: JobState::Added }),
        ),
        (JobCommand::SetBatchSize { job: "j".into(), batch_size: 5 }.into(), Ok(Reply::Done)),
        (JobCommand::FailJob { job: "j".into(), error: "model broke".into(), now_ms: 200 }.into(), Ok(Reply::Done)),
    ]);
    assert_eq!(kinds(&st), vec![(1, EventKind::JobStarted), (2, EventKind::JobFailed)]);
    let failed = &st.events.events[1];
    assert_eq!((failed.at_ms, failed.job.as_deref()), (200, Some("j")));
    assert_eq!(failed.detail, "job j failed: model broke");
}

#[test]
fn a_job_event_without_a_time_takes_the_newest_events_time() {
    let st = run(vec![
        (job("j", 10), Ok(Reply::Done)),
        (record(vec![event("k", 500)]), Ok(Reply::Done)),
        (JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 0 }.into(), Ok(Reply::Done)),
    ]);
    assert_eq!(kinds(&st), vec![(1, EventKind::MemberDead), (2, EventKind::JobStarted)]);
    assert_eq!(st.events.events[1].at_ms, 500);
}

#[test]
fn events_go_through_json_as_the_events_command_shows_them() {
    let text = r#"{"op":"record_events","events":[{"at_ms":5,"kind":"leader_elected","node":2,"job":null,"detail":"d","key":"leader/4","by":2}]}"#;
    let c: Command = serde_json::from_str(text).unwrap();
    assert_eq!(serde_json::to_string(&c).unwrap(), text);
    let bad = r#"{"op":"record_events","events":[{"at_ms":5,"kind":"meteor","node":2,"detail":"d","key":"k","by":2}]}"#;
    let e = serde_json::from_str::<Command>(bad).unwrap_err().to_string();
    assert!(e.contains("unknown variant `meteor`"), "{e}");
}
