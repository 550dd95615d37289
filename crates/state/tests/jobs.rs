//! The inference jobs, case by case: a command, then what it must answer, with
//! the invariants checked after every step and a refusal checked to leave
//! the state exactly as it was.

mod common;

use common::*;
use idunno_state::{
    AssignmentNote, Command, DoneQuery, FileRef, Histogram, JobCommand, JobResults, JobSpec, JobState, Refusal, Reply,
    ResultSegment,
};

#[test]
fn batch_sizes_are_bounded_by_what_a_message_carries() {
    let big = idunno_state::MAX_BATCH_SIZE + 1;
    let mut small = job("small", 4);
    if let Command::Jobs(JobCommand::AddJob { spec }) = &mut small {
        spec.max_batch = 100;
    }
    let st = run(vec![
        (job("j", big), Err(Refusal::BatchSizeTooLarge { batch_size: big, max: big - 1 })),
        (job("j", 8), Ok(Reply::Done)),
        (
            JobCommand::SetBatchSize { job: "j".into(), batch_size: u32::MAX }.into(),
            Err(Refusal::BatchSizeTooLarge { batch_size: u32::MAX, max: big - 1 }),
        ),
        (small, Ok(Reply::Done)),
        (
            JobCommand::SetBatchSize { job: "small".into(), batch_size: 101 }.into(),
            Err(Refusal::BatchSizeTooLarge { batch_size: 101, max: 100 }),
        ),
        (JobCommand::SetBatchSize { job: "small".into(), batch_size: 100 }.into(), Ok(Reply::Done)),
    ]);
    assert_eq!(st.inference.jobs["small"].spec.batch_size, 100);
}

#[test]
fn a_transpose_is_an_order_of_axes() {
    let with = |name: &str, t: &[u32]| {
        let mut c = job(name, 4);
        if let Command::Jobs(JobCommand::AddJob { spec }) = &mut c {
            spec.transpose = t.to_vec();
        }
        c
    };
    run(vec![
        (with("a", &[0, 2]), Err(Refusal::BadTranspose { transpose: vec![0, 2] })),
        (with("a", &[1, 1]), Err(Refusal::BadTranspose { transpose: vec![1, 1] })),
        (with("a", &[2, 0, 1]), Ok(Reply::Done)),
        (with("b", &[]), Ok(Reply::Done)),
    ]);
}

#[test]
fn job_life_cycle() {
    let st = run(vec![
        (job("j", 8), Ok(Reply::Done)),
        (job("j", 8), Err(Refusal::JobExists { job: "j".into() })),
        (job("k", 0), Err(Refusal::BatchSizeZero)),
        (
            state("j", JobState::Done),
            Err(Refusal::BadTransition { job: "j".into(), from: JobState::Added, to: JobState::Done }),
        ),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (JobCommand::RemoveJob { job: "j".into() }.into(), Err(Refusal::JobRunning { job: "j".into() })),
        (JobCommand::SetBatchSize { job: "j".into(), batch_size: 16 }.into(), Ok(Reply::Done)),
        (JobCommand::SetBatchSize { job: "j".into(), batch_size: 0 }.into(), Err(Refusal::BatchSizeZero)),
        (JobCommand::RecordProgress { job: "j".into(), queries: 2, inputs: 32 }.into(), Ok(Reply::Done)),
        (state("j", JobState::Stopped), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (state("j", JobState::Done), Ok(Reply::Done)),
        (state("nope", JobState::Running), Err(Refusal::NoSuchJob { job: "nope".into() })),
    ]);
    let j = &st.inference.jobs["j"];
    assert_eq!(j.state, JobState::Done);
    assert_eq!(j.spec.batch_size, 16);
    assert_eq!((j.progress.queries_done, j.progress.inputs_done), (2, 32));
}

#[test]
fn assignments_name_existing_jobs_and_go_with_them() {
    let st = run(vec![
        (job("j", 1), Ok(Reply::Done)),
        (
            JobCommand::SetAssignments {
                assignments: [("ghost".to_string(), vec![1])].into(),
                notes: Default::default(),
            }
            .into(),
            Err(Refusal::NoSuchJob { job: "ghost".into() }),
        ),
        (
            JobCommand::SetAssignments {
                assignments: [("j".to_string(), vec![1, 1])].into(),
                notes: Default::default(),
            }
            .into(),
            Err(Refusal::DuplicateReplica { replicas: vec![1, 1] }),
        ),
        (
            JobCommand::SetAssignments {
                assignments: [("j".to_string(), vec![1, 2])].into(),
                notes: [("j".to_string(), Default::default())].into(),
            }
            .into(),
            Ok(Reply::Done),
        ),
        (JobCommand::RemoveJob { job: "j".into() }.into(), Ok(Reply::Done)),
    ]);
    assert!(
        st.inference.assignments.is_empty() && st.inference.jobs.is_empty() && st.inference.assignment_notes.is_empty()
    );
}

#[test]
fn commands_and_replies_round_trip_as_json() {
    // The wire (and the hidden `coord apply` CLI) carry commands as JSON.
    let c: Command = serde_json::from_str(
        r#"{"op":"add_job","spec":{"name":"j","model":"m","inputs":"i","labels":null,"batch_size":2}}"#,
    )
    .unwrap();
    let want = JobSpec {
        name: "j".into(),
        model: "m".into(),
        inputs: "i".into(),
        labels: None,
        batch_size: 2,
        ..Default::default()
    };
    assert_eq!(c, JobCommand::AddJob { spec: want }.into());
    // Every field type inside a command must survive the tagged enum's
    // JSON (integer map keys do not).
    let note = AssignmentNote {
        cost_us: Some(4),
        predicted_mqps: None,
        shares_permille: vec![(1, 500), (2, 500)],
        queries_permille: vec![(1, 350), (2, 650)],
        slots: vec![(1, 1), (2, 2)],
        busy_permille: vec![(1, 950), (2, 900)],
    };
    let c = JobCommand::SetAssignments {
        assignments: [("j".to_string(), vec![1, 2])].into(),
        notes: [("j".to_string(), note)].into(),
    };
    assert_eq!(serde_json::from_str::<Command>(&serde_json::to_string(&c).unwrap()).unwrap(), c.clone().into());
    // A note written before the per-worker query shares and slots reads
    // with none.
    let old = r#"{"op":"set_assignments","assignments":{"j":[1]},"notes":{"j":{"cost_us":4,"predicted_mqps":null,"shares_permille":[[1,1000]]}}}"#;
    let Command::Jobs(JobCommand::SetAssignments { notes, .. }) = serde_json::from_str::<Command>(old).unwrap() else {
        panic!("not set_assignments")
    };
    assert_eq!(notes["j"].slots, vec![]);
    assert_eq!(notes["j"].shares_permille, vec![(1, 1000)]);
    let c = JobCommand::CompleteQueries {
        job: "j".into(),
        expect_done: 3,
        queries: vec![DoneQuery {
            start: 1,
            len: 2,
            latency_us: 3,
            labeled: 4,
            correct: 5,
            loss_count: 6,
            loss_micro: 7,
        }],
        now_ms: 6,
        segment: Some(seg("j.results.000000000004-00", 4, 1, 2, 0)),
    };
    assert_eq!(serde_json::from_str::<Command>(&serde_json::to_string(&c).unwrap()).unwrap(), c.into());
    let r: Result<Reply, Refusal> = Err(Refusal::NoSuchJob { job: "x".into() });
    let back: Result<Reply, Refusal> = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

fn sized_job(name: &str, samples: u64, passes: Option<u64>) -> Command {
    JobCommand::AddJob {
        spec: JobSpec {
            name: name.into(),
            model: "m.onnx".into(),
            inputs: "x.npy".into(),
            batch_size: 4,
            samples,
            passes,
            ..Default::default()
        },
    }
    .into()
}

fn q(start: u64, len: u64) -> DoneQuery {
    // Every input has a loss of 0.25 + start.
    let loss_micro = len * (250_000 + 1_000_000 * start);
    DoneQuery {
        start,
        len,
        latency_us: 1000 * (start + 1),
        labeled: len,
        correct: len / 2,
        loss_count: len,
        loss_micro,
    }
}

fn complete(expect_done: u64, queries: Vec<DoneQuery>, now_ms: u64) -> Command {
    JobCommand::CompleteQueries { job: "j".into(), expect_done, queries, now_ms, segment: None }.into()
}

fn seg(name: &str, first_query: u64, queries: u64, rows: u64, last_pass: u64) -> ResultSegment {
    let file = FileRef { name: name.into(), version: 1 };
    ResultSegment { file, first_query, queries, rows, bytes: 16 + 32 * rows, last_pass }
}

fn complete_with(expect_done: u64, queries: Vec<DoneQuery>, segment: ResultSegment) -> Command {
    JobCommand::CompleteQueries { job: "j".into(), expect_done, queries, now_ms: 1, segment: Some(segment) }.into()
}

fn file(name: &str) -> FileRef {
    FileRef { name: name.into(), version: 1 }
}

#[test]
fn result_segments_join_with_their_count_and_leave_by_compaction() {
    let counted = |first| Ok(Reply::Completed { first_query: first, finished: false });
    let bad = |reason: &str| Err(Refusal::BadResults { job: "j".into(), reason: reason.into() });
    let st = run(vec![
        (sized_job("j", 8, None), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (complete_with(0, vec![q(0, 4), q(4, 4)], seg("s1", 1, 2, 8, 0)), counted(1)),
        // A segment that does not describe the queries it comes with is
        // refused, and nothing is counted.
        (
            complete_with(2, vec![q(8, 4)], seg("s2", 3, 1, 5, 1)),
            bad("segment s2 (queries 3 +1, 5 rows) does not describe queries 3 +1 (4 rows)"),
        ),
        (complete_with(2, vec![q(8, 4)], seg("s2", 3, 1, 4, 1)), counted(3)),
        (complete_with(3, vec![q(12, 4)], seg("s3", 4, 1, 4, 1)), counted(4)),
        // Compaction replaces a prefix of the segments, against the base
        // it read.
        (
            JobCommand::CompactResults {
                job: "j".into(),
                expect_base: None,
                base: file("b"),
                segments: vec![file("s2")],
            }
            .into(),
            bad("the results changed while they were compacted"),
        ),
        (
            JobCommand::CompactResults {
                job: "j".into(),
                expect_base: None,
                base: file("b"),
                segments: vec![file("s1"), file("s2")],
            }
            .into(),
            Ok(Reply::Done),
        ),
        (
            JobCommand::CompactResults { job: "j".into(), expect_base: None, base: file("b2"), segments: vec![] }
                .into(),
            bad("the results changed while they were compacted"),
        ),
    ]);
    let r = &st.inference.jobs["j"].results;
    assert_eq!(r.base, Some(file("b")));
    assert_eq!(r.segments.iter().map(|s| s.file.name.as_str()).collect::<Vec<_>>(), ["s3"]);
    let mut st = st;
    assert_eq!(st.apply(JobCommand::DropResults { job: "j".into(), files: vec![file("s3")] }), Ok(Reply::Done));
    assert!(st.inference.jobs["j"].results.segments.is_empty());
    // A finished job run again starts with no results.
    let mut st = run(vec![
        (sized_job("j", 4, Some(1)), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (
            complete_with(0, vec![q(0, 4)], seg("s1", 1, 1, 4, 0)),
            Ok(Reply::Completed { first_query: 1, finished: true }),
        ),
    ]);
    assert_eq!(st.inference.jobs["j"].results.segments.len(), 1);
    st.apply(JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 2 }).unwrap();
    assert_eq!(st.inference.jobs["j"].results, JobResults::default());
}

#[test]
fn a_workers_counts_cannot_wrap_or_exceed_its_inputs() {
    let wild = DoneQuery {
        start: 0,
        len: 4,
        latency_us: u64::MAX,
        labeled: u64::MAX,
        correct: u64::MAX,
        loss_count: u64::MAX,
        loss_micro: u64::MAX,
    };
    let st = run(vec![
        (sized_job("j", 10, None), Ok(Reply::Done)),
        (JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 1 }.into(), Ok(Reply::Done)),
        (complete(0, vec![wild.clone()], 100), Ok(Reply::Completed { first_query: 1, finished: false })),
        (
            complete(1, vec![DoneQuery { start: 4, ..wild }], 100),
            Ok(Reply::Completed { first_query: 2, finished: false }),
        ),
    ]);
    let p = &st.inference.jobs["j"].progress;
    assert_eq!((p.labeled, p.correct, p.loss_count), (8, 8, 8));
    assert_eq!(p.latency.sum_us, u64::MAX, "saturated, not wrapped");
    assert_eq!(p.loss_micro, u64::MAX, "saturated, not wrapped");
}

#[test]
fn each_query_counts_once_and_passes_end_the_job() {
    let repeat = |start, len| Err(Refusal::RepeatedQuery { job: "j".into(), start, len });
    let st = run(vec![
        (sized_job("j", 10, Some(2)), Ok(Reply::Done)),
        (complete(0, vec![q(0, 4)], 5), Err(Refusal::JobNotRunning { job: "j".into() })),
        (JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 1 }.into(), Ok(Reply::Done)),
        (complete(0, vec![q(0, 4), q(4, 4)], 100), Ok(Reply::Completed { first_query: 1, finished: false })),
        // A re-executed query, a stale count, overlap inside one command,
        // a query across two passes, one past the last pass: all refused,
        // nothing counted.
        (complete(2, vec![q(0, 4)], 200), repeat(0, 4)),
        (complete(1, vec![q(8, 2)], 200), Err(Refusal::StaleCount { job: "j".into(), expected: 1, actual: 2 })),
        (complete(2, vec![q(8, 1), q(8, 2)], 200), repeat(8, 2)),
        (complete(2, vec![q(8, 4)], 200), repeat(8, 4)),
        (complete(2, vec![q(18, 4)], 200), repeat(18, 4)),
        // The second pass may start before the first is done.
        (complete(2, vec![q(10, 3)], 300), Ok(Reply::Completed { first_query: 3, finished: false })),
        (complete(3, vec![q(8, 2)], 300), Ok(Reply::Completed { first_query: 4, finished: false })),
        // With another batch size (ranges of any length).
        (complete(4, vec![q(13, 7)], 400), Ok(Reply::Completed { first_query: 5, finished: true })),
        (complete(5, vec![q(20, 1)], 500), Err(Refusal::JobNotRunning { job: "j".into() })),
    ]);
    let p = &st.inference.jobs["j"].progress;
    assert_eq!(st.inference.jobs["j"].state, JobState::Done);
    assert_eq!((p.queries_done, p.inputs_done, p.pass), (5, 20, 2));
    assert_eq!(p.done, [(0, 20)]);
    assert_eq!((p.labeled, p.correct), (20, 2 + 2 + 1 + 1 + 3));
    assert_eq!(p.latency.count, 5);
    // The mean loss over the counted inputs only (refused queries add
    // nothing): 4 at 0.25, 4 at 4.25, 3 at 10.25, 2 at 8.25, 7 at 13.25.
    let want = (4.0 * 0.25 + 4.0 * 4.25 + 3.0 * 10.25 + 2.0 * 8.25 + 7.0 * 13.25) / 20.0;
    assert!((p.loss().unwrap() - want).abs() < 1e-9, "{:?} vs {want}", p.loss());
}

#[test]
fn the_pass_is_that_of_the_first_input_not_done() {
    let st = run(vec![
        (sized_job("j", 4, None), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (complete(0, vec![q(4, 4), q(8, 2)], 10), Ok(Reply::Completed { first_query: 1, finished: false })),
    ]);
    assert_eq!(st.inference.jobs["j"].progress.pass, 0);
    let mut st = st;
    st.apply(complete(2, vec![q(0, 4)], 20)).unwrap();
    assert_eq!(st.inference.jobs["j"].progress.pass, 2);
    assert_eq!(st.inference.jobs["j"].progress.done, [(0, 10)]);
}

#[test]
fn running_a_done_job_again_starts_from_the_first_pass() {
    let st = run(vec![
        (sized_job("j", 2, Some(1)), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (complete(0, vec![q(0, 2)], 10), Ok(Reply::Completed { first_query: 1, finished: true })),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (complete(1, vec![q(0, 1)], 20), Ok(Reply::Completed { first_query: 2, finished: false })),
    ]);
    let p = &st.inference.jobs["j"].progress;
    assert_eq!((p.pass, p.done.clone(), p.queries_done), (0, vec![(0, 1)], 2));
}

#[test]
fn query_rate_counts_the_last_ten_seconds() {
    let mut st = run(vec![
        (sized_job("j", 1_000_000, None), Ok(Reply::Done)),
        (JobCommand::SetJobState { job: "j".into(), state: JobState::Running, now_ms: 0 }.into(), Ok(Reply::Done)),
    ]);
    // 10 queries every 100 ms for 20 s: 100 queries/s.
    for k in 0..200u64 {
        let qs = (0..10).map(|i| q((k * 10 + i) * 4, 4)).collect();
        st.apply(complete(k * 10, qs, k * 100 + 50)).unwrap();
    }
    let p = &st.inference.jobs["j"].progress;
    assert!((p.query_rate(19_999) - 100.0).abs() < 1.0, "{}", p.query_rate(19_999));
    // Nothing for 5 s: half the window is empty.
    assert!((p.query_rate(25_000) - 50.0).abs() < 1.5, "{}", p.query_rate(25_000));
    assert_eq!(p.query_rate(40_000), 0.0);
    assert!(p.recent.len() <= 101, "the window is pruned: {}", p.recent.len());
    st.check_invariants().unwrap();
}

#[test]
fn histogram_percentiles_within_two_percent() {
    let mut h = Histogram::default();
    for us in 1..=10_000u64 {
        h.record(us * 10);
    }
    let s = h.summary();
    for (got, want) in [(s.median, 50.0), (s.p90, 90.0), (s.p95, 95.0), (s.p99, 99.0)] {
        assert!((got - want).abs() / want < 0.02, "{got} vs {want}");
    }
    assert!((s.avg - 50.005).abs() < 1e-9);
    assert!((s.std - 28.866).abs() < 0.01, "{}", s.std);
    let back: Histogram = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
    assert_eq!(back, h);
}
