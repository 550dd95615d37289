//! The state machine, case by case: a command, then what it must answer,
//! with the invariants checked after every step and a refusal checked to
//! leave the state exactly as it was.

use idunno_coordinator::state::{ClusterState, Command, JobSpec, JobState, Refusal, Reply};

fn put(name: &str, replicas: &[u64]) -> Command {
    Command::CommitFileVersion {
        name: name.into(),
        size: 10,
        blake3: "ab".into(),
        replicas: replicas.to_vec(),
        keep: 5,
        now_ms: 1,
    }
}

fn job(name: &str, batch: u32) -> Command {
    Command::AddJob {
        spec: JobSpec {
            name: name.into(),
            model: "m.onnx".into(),
            inputs: "x.npy".into(),
            labels: None,
            batch_size: batch,
        },
    }
}

fn state(job: &str, s: JobState) -> Command {
    Command::SetJobState { job: job.into(), state: s }
}

/// Run `steps`; each expects Ok(reply) or a refusal.
fn run(steps: Vec<(Command, Result<Reply, Refusal>)>) -> ClusterState {
    let mut st = ClusterState::default();
    for (i, (cmd, want)) in steps.into_iter().enumerate() {
        let before = st.clone();
        let got = st.apply(cmd.clone());
        assert_eq!(got, want, "step {i}: {cmd:?}");
        if got.is_err() {
            assert_eq!(st, before, "step {i}: a refused command changed the state");
        }
        st.check_invariants().unwrap_or_else(|e| panic!("step {i}: invariant broken: {e}"));
    }
    st
}

fn committed(version: u64, dropped: &[u64]) -> Result<Reply, Refusal> {
    Ok(Reply::Committed { version, dropped: dropped.to_vec() })
}

#[test]
fn versions_count_up_and_only_five_are_kept() {
    let mut steps = Vec::new();
    for v in 1..=5 {
        steps.push((put("a", &[1, 2, 3, 4]), committed(v, &[])));
    }
    steps.push((put("a", &[1, 2, 3, 4]), committed(6, &[1])));
    steps.push((put("a", &[2, 3, 4, 5]), committed(7, &[2])));
    let st = run(steps);
    let versions: Vec<u64> = st.files["a"].versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![3, 4, 5, 6, 7]);
}

#[test]
fn delete_then_put_never_reuses_a_version() {
    let st = run(vec![
        (put("a", &[1]), committed(1, &[])),
        (put("a", &[1]), committed(2, &[])),
        (Command::DeleteFile { name: "a".into() }, Ok(Reply::Deleted { versions: vec![1, 2] })),
        (Command::DeleteFile { name: "a".into() }, Err(Refusal::NoSuchFile { name: "a".into() })),
        (put("a", &[2]), committed(3, &[])),
    ]);
    assert_eq!(st.files["a"].versions.len(), 1);
}

#[test]
fn file_commands_refuse_bad_input() {
    run(vec![
        (put("", &[1]), Err(Refusal::Empty { what: "file name".into() })),
        (put("a", &[]), Err(Refusal::Empty { what: "replica list".into() })),
        (put("a", &[1, 1]), Err(Refusal::DuplicateReplica { replicas: vec![1, 1] })),
        (
            Command::CommitFileVersion {
                name: "a".into(),
                size: 1,
                blake3: "x".into(),
                replicas: vec![1],
                keep: 0,
                now_ms: 0,
            },
            Err(Refusal::KeepZero),
        ),
        (
            Command::SetReplicas { name: "a".into(), version: 1, replicas: vec![2] },
            Err(Refusal::NoSuchFile { name: "a".into() }),
        ),
        (put("a", &[1]), committed(1, &[])),
        (
            Command::SetReplicas { name: "a".into(), version: 9, replicas: vec![2] },
            Err(Refusal::NoSuchVersion { name: "a".into(), version: 9 }),
        ),
        (Command::SetReplicas { name: "a".into(), version: 1, replicas: vec![2, 3] }, Ok(Reply::Done)),
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
        (Command::RemoveJob { job: "j".into() }, Err(Refusal::JobRunning { job: "j".into() })),
        (Command::SetBatchSize { job: "j".into(), batch_size: 16 }, Ok(Reply::Done)),
        (Command::SetBatchSize { job: "j".into(), batch_size: 0 }, Err(Refusal::BatchSizeZero)),
        (Command::RecordProgress { job: "j".into(), queries: 2, inputs: 32 }, Ok(Reply::Done)),
        (state("j", JobState::Stopped), Ok(Reply::Done)),
        (state("j", JobState::Running), Ok(Reply::Done)),
        (state("j", JobState::Done), Ok(Reply::Done)),
        (state("nope", JobState::Running), Err(Refusal::NoSuchJob { job: "nope".into() })),
    ]);
    let j = &st.jobs["j"];
    assert_eq!(j.state, JobState::Done);
    assert_eq!(j.spec.batch_size, 16);
    assert_eq!((j.progress.queries_done, j.progress.inputs_done), (2, 32));
}

#[test]
fn assignments_name_existing_jobs_and_go_with_them() {
    let st = run(vec![
        (job("j", 1), Ok(Reply::Done)),
        (
            Command::SetAssignments { assignments: [("ghost".to_string(), vec![1])].into() },
            Err(Refusal::NoSuchJob { job: "ghost".into() }),
        ),
        (
            Command::SetAssignments { assignments: [("j".to_string(), vec![1, 1])].into() },
            Err(Refusal::DuplicateReplica { replicas: vec![1, 1] }),
        ),
        (Command::SetAssignments { assignments: [("j".to_string(), vec![1, 2])].into() }, Ok(Reply::Done)),
        (Command::RemoveJob { job: "j".into() }, Ok(Reply::Done)),
    ]);
    assert!(st.assignments.is_empty() && st.jobs.is_empty());
}

#[test]
fn commands_and_replies_round_trip_as_json() {
    // The wire (and the hidden `coord apply` CLI) carry commands as JSON.
    let c: Command = serde_json::from_str(
        r#"{"op":"add_job","spec":{"name":"j","model":"m","inputs":"i","labels":null,"batch_size":2}}"#,
    )
    .unwrap();
    let want = JobSpec { name: "j".into(), model: "m".into(), inputs: "i".into(), labels: None, batch_size: 2 };
    assert_eq!(c, Command::AddJob { spec: want });
    let r: Result<Reply, Refusal> = Err(Refusal::NoSuchJob { job: "x".into() });
    let back: Result<Reply, Refusal> = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}
