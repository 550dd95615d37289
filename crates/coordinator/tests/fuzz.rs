//! Property fuzzing of what the coordinator decodes from the network and
//! from its own disk: commands (JSON, from any client through `Apply`),
//! Raft messages (openraft's types as JSON), and snapshot files.
//!
//! Commands are built from real ones with hostile fields (huge and
//! negative numbers, empty and multi-byte names, unknown ops) and then
//! mutated as text. Properties: decoding never panics and allocates at
//! most [`bound`]; a decoded command applied to a populated state either
//! changes it and keeps every invariant, or is refused and changes
//! nothing. The long run is `PROPTEST_CASES=1000000 cargo test --release
//! -p idunno-coordinator --test fuzz` (figures in docs/limits.md).

use idunno_coordinator::raft::TypeConfig;
use idunno_coordinator::store::{SmData, SnapshotFile};
use idunno_state::{ClusterState, Command, EventCommand, FileCommand, JobCommand, JobSpec, TrainCommand};
use idunno_testkit::alloc::{Counting, peak_during};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use proptest::prelude::*;
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: Counting = Counting;

fn bound(len: usize) -> usize {
    16 * len + (256 << 10)
}

/// A state with a file, a running job and a training, for commands to
/// act on.
fn populated() -> ClusterState {
    let mut st = ClusterState::default();
    let cmds = [
        json!({"op": "commit_file_version", "name": "f", "size": 3, "blake3": "ab", "replicas": [1, 2], "keep": 5, "now_ms": 1}),
        json!({"op": "add_job", "spec": {"name": "j", "model": "m", "inputs": "f", "labels": null, "batch_size": 4, "samples": 100, "passes": 2}}),
        json!({"op": "set_job_state", "job": "j", "state": "running", "now_ms": 2}),
    ];
    for c in cmds {
        let cmd: Command = serde_json::from_value(c).expect("a valid command");
        st.apply(cmd).expect("applies");
    }
    st
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0..10u64).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => Just(Value::from(u32::MAX)),
        1 => Just(Value::from(-1)),
        1 => Just(json!(1e300)),
        1 => any::<u64>().prop_map(Value::from),
    ]
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("j")),
        Just(json!("f")),
        Just(json!("")),
        Just(json!("é✓")),
        Just(json!("x".repeat(5000))),
        "\\PC{0,6}".prop_map(Value::from),
    ]
}

/// A command: one of every op, its fields drawn from hostile values.
fn command() -> impl Strategy<Value = Value> {
    let ops: Vec<&str> = FileCommand::OPS
        .iter()
        .chain(JobCommand::OPS)
        .chain(TrainCommand::OPS)
        .chain(EventCommand::OPS)
        .copied()
        .chain(["no_such_op"])
        .collect();
    (
        prop::sample::select(ops),
        text(),
        number(),
        number(),
        number(),
        prop::collection::vec(number(), 0..4),
        prop::sample::select(vec!["running", "stopped", "done", "failed", "added", "bogus"]),
    )
        .prop_map(|(op, name, a, b, c, list, state)| {
            let queries: Vec<Value> = list
                .iter()
                .map(|n| json!({"start": n, "len": a, "latency_us": b, "labeled": c, "correct": n}))
                .collect();
            let events: Vec<Value> = list
                .iter()
                .map(|n| {
                    json!({"at_ms": n, "kind": state.replace("running", "member_dead"), "node": a, "job": name,
                                "detail": name, "key": name, "by": b})
                })
                .collect();
            json!({
                "op": op, "name": name, "job": name, "size": a, "blake3": name, "replicas": list, "events": events,
                "keep": b, "now_ms": c, "version": a, "names": [name], "state": state,
                "batch_size": a, "expect_done": b, "queries": queries, "inputs": c,
                "generation": a, "workers": list, "error": name,
                "spec": {"name": name, "model": "m", "inputs": "f", "labels": null, "batch_size": a,
                         "samples": b, "passes": c, "max_batch": a},
                "assignments": {"j": list}, "notes": {},
            })
        })
}

/// Command text: a command as JSON, then possibly mutated byte by byte.
fn command_text() -> impl Strategy<Value = Vec<u8>> {
    (command(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3)).prop_map(|(c, flips)| {
        let mut bytes = serde_json::to_vec(&c).expect("json");
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes
    })
}

fn log_id(i: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), i)
}

/// Real Raft messages as JSON, the seeds of the mutations.
fn raft_messages() -> Vec<Vec<u8>> {
    let cmd: Command = serde_json::from_value(json!({"op": "delete_file", "name": "f", "now_ms": 3})).unwrap();
    let entries = vec![
        Entry::<TypeConfig> { log_id: log_id(1), payload: EntryPayload::Blank },
        Entry::<TypeConfig> { log_id: log_id(2), payload: EntryPayload::Normal(cmd) },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id(0)),
        entries,
        leader_commit: Some(log_id(1)),
    };
    let vote = VoteRequest::new(Vote::new(2, 2), Some(log_id(2)));
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        meta: Default::default(),
        offset: 0,
        data: Vec::new(),
        done: true,
    };
    vec![
        serde_json::to_vec(&append).unwrap(),
        serde_json::to_vec(&vote).unwrap(),
        serde_json::to_vec(&snapshot).unwrap(),
    ]
}

proptest! {
    #[test]
    fn commands_decode_and_apply_or_change_nothing(bytes in command_text()) {
        let (decoded, peak) = peak_during(|| serde_json::from_slice::<Command>(&bytes));
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated decoding {} bytes", bytes.len());
        if let Ok(cmd) = decoded {
            let mut st = populated();
            let before = st.clone();
            match st.apply(cmd) {
                Ok(_) => {
                    if let Err(e) = st.check_invariants() {
                        return Err(TestCaseError::fail(format!("invariant broken: {e}")));
                    }
                }
                Err(_) => prop_assert_eq!(st, before, "a refused command changed the state"),
            }
        }
    }

    #[test]
    fn raft_messages_decode_without_panic(
        which in 0..3usize,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = raft_messages().swap_remove(which);
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let (_, peak) = peak_during(|| {
            let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&bytes);
            let _ = serde_json::from_slice::<VoteRequest<u64>>(&bytes);
            let _ = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(&bytes);
        });
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated decoding {} bytes", bytes.len());
    }

    #[test]
    fn snapshot_files_decode_without_panic(
        data in prop::collection::vec(any::<u8>(), 0..64),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in 0..80usize,
    ) {
        let file = SnapshotFile { meta: Default::default(), data };
        let mut bytes = file.encode().unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = bytes.len().saturating_sub(cut);
        bytes.truncate(keep);
        let len = bytes.len();
        let (decoded, peak) = peak_during(|| SnapshotFile::decode(bytes));
        prop_assert!(peak <= bound(len), "{peak} bytes allocated decoding {len} bytes");
        if let Ok(f) = decoded {
            prop_assert!(f.data.len() <= len);
        }
    }
}

proptest! {
    /// The state inside a snapshot, in its binary form, with bytes
    /// changed and cut: decoding never panics, and a length prefix that
    /// lies allocates no more than the bytes hold (found here: `imbl`'s
    /// own decoding reserved what a damaged prefix claimed, 6.9 MB for 67
    /// bytes; see `idunno_state::bounded`).
    #[test]
    fn snapshot_states_decode_without_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in 0..200usize,
    ) {
        let data = SmData { state: populated(), ..Default::default() };
        let mut bytes = data.encode().unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = bytes.len().saturating_sub(cut);
        bytes.truncate(keep);
        let (decoded, peak) = peak_during(|| SmData::decode(&bytes));
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated decoding {} bytes", bytes.len());
        if let Ok(d) = decoded {
            // Whatever decoded is a state like any other: applying to it
            // is safe, and nothing in it is larger than its bytes.
            prop_assert!(d.state.namespace.files.len() <= bytes.len());
        }
    }
}

#[test]
fn a_real_job_spec_survives_the_round_trip() {
    // The generators above build commands from field names: check they
    // still match the real shape, or the fuzzing would only test refusals.
    let spec = JobSpec { name: "x".into(), model: "m".into(), inputs: "f".into(), batch_size: 2, ..Default::default() };
    let v = serde_json::to_value(JobCommand::AddJob { spec }).unwrap();
    for key in ["name", "model", "inputs", "batch_size", "samples", "passes", "max_batch"] {
        assert!(v["spec"].get(key).is_some(), "spec has no {key}: {v}");
    }
    let applied = (0..200)
        .filter(|i| {
            let mut st = populated();
            let c = json!({"op": "set_batch_size", "job": "j", "batch_size": i % 10});
            st.apply(serde_json::from_value::<Command>(c).unwrap()).is_ok()
        })
        .count();
    assert!(applied > 100);
}
