//! The SDFS namespace, case by case: a command, then what it must answer, with
//! the invariants checked after every step and a refusal checked to leave
//! the state exactly as it was.

mod common;

use common::*;
use idunno_state::{Command, FileCommand, Refusal, Reply};

#[test]
fn versions_count_up_and_only_five_are_kept() {
    let mut steps = Vec::new();
    for v in 1..=5 {
        steps.push((put("a", &[1, 2, 3, 4]), committed(v, &[])));
    }
    steps.push((put("a", &[1, 2, 3, 4]), committed(6, &[1])));
    steps.push((put("a", &[2, 3, 4, 5]), committed(7, &[2])));
    let st = run(steps);
    let versions: Vec<u64> = st.namespace.files["a"].versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![3, 4, 5, 6, 7]);
}

#[test]
fn delete_then_put_never_reuses_a_version() {
    let st = run(vec![
        (put("a", &[1]), committed(1, &[])),
        (put("a", &[1]), committed(2, &[])),
        (FileCommand::DeleteFile { name: "a".into(), now_ms: 5 }.into(), Ok(Reply::Deleted { versions: vec![1, 2] })),
        (FileCommand::DeleteFile { name: "a".into(), now_ms: 6 }.into(), Err(Refusal::NoSuchFile { name: "a".into() })),
        (put("a", &[2]), committed(3, &[])),
    ]);
    assert_eq!(st.namespace.files["a"].versions.len(), 1);
}

#[test]
fn forgotten_tombstones_never_let_a_version_repeat() {
    let forget = |names: &[&str]| -> Command {
        FileCommand::ForgetFiles { names: names.iter().map(|n| n.to_string()).collect() }.into()
    };
    let st = run(vec![
        (put("a", &[1]), committed(1, &[])),
        (put("a", &[1]), committed(2, &[])),
        (put("b", &[1]), committed(1, &[])),
        (FileCommand::DeleteFile { name: "a".into(), now_ms: 5 }.into(), Ok(Reply::Deleted { versions: vec![1, 2] })),
        // b has versions, c does not exist: both left alone.
        (forget(&["a", "b", "c"]), Ok(Reply::Done)),
    ]);
    assert_eq!(st.namespace.files.keys().collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(st.namespace.version_floor, 3);
    let mut st = st;
    // A name put again after its tombstone went starts above every
    // version it ever had; so does a new name.
    assert_eq!(st.apply(put("a", &[1])), committed(3, &[]));
    assert_eq!(st.apply(put("new", &[1])), committed(3, &[]));
    assert_eq!(st.apply(put("b", &[1])), committed(2, &[]));
    // A name deleted and put again before it is forgotten keeps its entry.
    st.apply(FileCommand::DeleteFile { name: "b".into(), now_ms: 9 }).unwrap();
    assert!(st.namespace.files["b"].deleted_at_ms.is_some());
    st.apply(put("b", &[1])).unwrap();
    st.apply(forget(&["b"])).unwrap();
    assert_eq!(st.namespace.files["b"].versions.len(), 1);
    assert_eq!(st.namespace.files["b"].deleted_at_ms, None);
    st.check_invariants().unwrap();
}

#[test]
fn file_commands_refuse_bad_input() {
    run(vec![
        (put("", &[1]), Err(Refusal::Empty { what: "file name".into() })),
        (put("a", &[]), Err(Refusal::Empty { what: "replica list".into() })),
        (put("a", &[1, 1]), Err(Refusal::DuplicateReplica { replicas: vec![1, 1] })),
        (
            FileCommand::CommitFileVersion {
                name: "a".into(),
                size: 1,
                blake3: "x".into(),
                replicas: vec![1],
                keep: 0,
                now_ms: 0,
            }
            .into(),
            Err(Refusal::KeepZero),
        ),
        (
            FileCommand::SetReplicas { name: "a".into(), version: 1, replicas: vec![2] }.into(),
            Err(Refusal::NoSuchFile { name: "a".into() }),
        ),
        (put("a", &[1]), committed(1, &[])),
        (
            FileCommand::SetReplicas { name: "a".into(), version: 9, replicas: vec![2] }.into(),
            Err(Refusal::NoSuchVersion { name: "a".into(), version: 9 }),
        ),
        (FileCommand::SetReplicas { name: "a".into(), version: 1, replicas: vec![2, 3] }.into(), Ok(Reply::Done)),
    ]);
}
