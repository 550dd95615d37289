//! openraft's storage conformance suite, run against the real stores on a
//! real disk (a fresh temporary folder for every case).

use idunno_coordinator::raft::TypeConfig;
use idunno_coordinator::store::{LogStore, StateMachineStore};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for OnDisk {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path()).expect("open log");
        let sm = StateMachineStore::open(dir.path()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(OnDisk) {
        panic!("storage conformance: {e}");
    }
}

#[tokio::test]
async fn state_survives_reopening() {
    use idunno_state::{Command, JobCommand, JobSpec};
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};

    let dir = tempfile::tempdir().unwrap();
    let log_id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
    let cmd: Command = JobCommand::AddJob {
        spec: JobSpec {
            name: "j".into(),
            model: "m".into(),
            inputs: "i".into(),
            labels: None,
            batch_size: 4,
            ..Default::default()
        },
    }
    .into();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        assert!(log.is_empty().unwrap());
        let entries = vec![Entry::<TypeConfig> { log_id: log_id(1), payload: EntryPayload::Normal(cmd.clone()) }];
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        sm.apply(entries.clone()).await.unwrap();
        let mut b = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut b).await.unwrap();
        // Append through the public path the suite exercises too.
        log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert!(!log.is_empty().unwrap(), "a vote makes the store non-empty");
    assert_eq!(log.read_vote().await.unwrap(), Some(openraft::Vote::new(1, 1)));
    let sm = StateMachineStore::open(dir.path()).unwrap();
    let data = sm.watch().borrow().clone();
    assert_eq!(data.last_applied, Some(log_id(1)));
    assert!(data.state.inference.jobs.contains_key("j"), "the snapshot was loaded at open");
    assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
}

/// A state with something in every domain and every optional field set:
/// files (one deleted), a job that counted queries with a result segment
/// and has assignments, and a training with a group and a report.
fn every_domain() -> idunno_coordinator::store::SmData {
    use idunno_state::{ClusterState, Command};
    use serde_json::json;
    let mut state = ClusterState::default();
    let commands = [
        json!({"op": "commit_file_version", "name": "f", "size": 3, "blake3": "ab", "replicas": [1, 2], "keep": 5, "now_ms": 1}),
        json!({"op": "commit_file_version", "name": "gone", "size": 3, "blake3": "cd", "replicas": [3], "keep": 5, "now_ms": 1}),
        json!({"op": "delete_file", "name": "gone", "now_ms": 2}),
        json!({"op": "add_job", "spec": {"name": "j", "model": "m", "inputs": "f", "labels": "l", "batch_size": 4,
            "samples": 100, "passes": 2, "output": "vector", "transpose": [1, 0], "input_files": [{"name": "f", "version": 1}],
            "input_shards": [[{"name": "f-0", "version": 1, "samples": 60}, {"name": "f-1", "version": 2, "samples": 40}]],
            "label_shards": [{"name": "l-0", "version": 1, "samples": 100}]}}),
        json!({"op": "set_job_state", "job": "j", "state": "running", "now_ms": 2}),
        json!({"op": "complete_queries", "job": "j", "expect_done": 0, "now_ms": 3,
            "queries": [{"start": 0, "len": 4, "latency_us": 1500, "labeled": 4, "correct": 3, "loss_count": 4, "loss_micro": 2_500_000}],
            "segment": {"file": {"name": "j.results.1", "version": 1}, "first_query": 1, "queries": 1, "rows": 4, "bytes": 200, "last_pass": 0}}),
        json!({"op": "set_assignments", "assignments": {"j": [1, 2]},
            "notes": {"j": {"cost_us": 10, "predicted_mqps": 5, "shares_permille": [[1, 500]],
                "queries_permille": [[1, 400], [2, 600]], "slots": [[1, 1], [2, 2]], "busy_permille": [[1, 950], [2, 900]]}}}),
        json!({"op": "add_training", "now_ms": 5, "spec": {"name": "t", "arch": "mlp", "inputs": {"name": "x", "version": 1},
            "labels": {"name": "y", "version": 1}, "test_inputs": null, "test_labels": null, "samples": 1000, "classes": 10,
            "epochs": 2, "batch_size": 100, "workers": 2, "lr": "0.001", "seed": 1, "checkpoint_every": 4, "out": "m"}}),
        json!({"op": "set_train_group", "job": "t", "generation": 1, "workers": [2, 3], "now_ms": 6}),
        json!({"op": "drain_node", "node": 3, "generation": 9, "now_ms": 1_700_000_000_500u64}),
        json!({"op": "add_served", "spec": {"name": "m", "model": "f", "model_version": 1, "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            "max_batch": 8, "max_delay_ms": 1, "max_queue": 100, "weight": 2, "added_ms": 7}, "workers": 2}),
        json!({"op": "set_serve_placement", "placed": {"m": [1, 3]}}),
        json!({"op": "set_serve_ready", "ready": {"m": [1]}}),
    ];
    for c in commands {
        let cmd: Command = serde_json::from_value(c).expect("a command");
        state.apply(cmd).expect("applies");
    }
    state.check_invariants().expect("invariants");
    let membership = openraft::Membership::new(vec![[1, 2, 3].into()], None);
    idunno_coordinator::store::SmData {
        last_applied: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(4, 2), 77)),
        membership: openraft::StoredMembership::new(None, membership),
        state,
    }
}

/// `state` with every job's shards forgotten (what formats before 7 hold).
fn without_unsharded(state: &idunno_state::ClusterState) -> idunno_state::ClusterState {
    let mut s = state.clone();
    let names: Vec<String> = s.inference.jobs.keys().cloned().collect();
    for n in &names {
        if let Some(j) = s.inference.jobs.get_mut(n) {
            j.spec.input_shards.clear();
            j.spec.label_shards.clear();
        }
    }
    s
}

#[test]
fn snapshots_hold_the_state_in_binary_and_read_the_older_json() {
    use idunno_coordinator::store::SmData;
    let data = every_domain();
    let bytes = data.encode().unwrap();
    let back = SmData::decode(&bytes).unwrap();
    assert_eq!(back.state, data.state);
    assert_eq!((back.last_applied, back.membership), (data.last_applied, data.membership.clone()));
    let json = serde_json::to_vec(&data).unwrap();
    assert!(bytes.len() * 2 < json.len(), "binary {} bytes, JSON {}", bytes.len(), json.len());

    // What nodes wrote before: the state as JSON, in this shape or the
    // flat one of before the domains were split.
    assert_eq!(SmData::decode(&json).unwrap().state, data.state);
    let mut flat = serde_json::to_value(&data).unwrap();
    let s = flat["state"].take();
    flat["state"] = serde_json::json!({
        "files": s["namespace"]["files"], "version_floor": s["namespace"]["version_floor"],
        "jobs": s["inference"]["jobs"], "assignments": s["inference"]["assignments"],
        "assignment_notes": s["inference"]["assignment_notes"], "trainings": s["training"]["jobs"],
    });
    // (Both shapes are from before the timeline, the draining nodes and
    // served models: they come back empty.)
    assert!(!data.state.nodes.draining.is_empty(), "a node is draining");
    let mut without_events = data.state.clone();
    without_events.events = Default::default();
    without_events.nodes = Default::default();
    without_events.serving = Default::default();
    assert_eq!(SmData::decode(&serde_json::to_vec(&flat).unwrap()).unwrap().state, without_events);

    // Formats 1 to 3 hold the assignment notes without the per-worker
    // query shares and slots: they come back without them.
    assert!(
        data.state.inference.assignment_notes.values().any(|n| !n.slots.is_empty()),
        "a note names its workers' slots"
    );
    assert_eq!(data.state.inference.jobs["j"].progress.loss(), Some(0.625), "a job has a loss");
    let old_notes = idunno_state::JobTableV3::from(&data.state.inference);
    // (Formats 1 to 6 hold no shards either.)
    let mut without_loss = without_unsharded(&data.state);
    let names: Vec<String> = without_loss.inference.jobs.keys().cloned().collect();
    for n in &names {
        if let Some(j) = without_loss.inference.jobs.get_mut(n) {
            (j.progress.loss_count, j.progress.loss_micro) = (0, 0);
        }
    }
    // (Nor the workers' busy time in the notes.)
    assert!(data.state.inference.assignment_notes.values().any(|n| !n.busy_permille.is_empty()));
    for n in without_loss.inference.assignment_notes.values_mut() {
        n.busy_permille.clear();
    }
    let old_jobs = idunno_state::JobTableV5::from(&data.state.inference);
    let mut without_shares = without_loss.clone();
    for n in without_shares.inference.assignment_notes.values_mut() {
        n.queries_permille.clear();
        n.slots.clear();
    }
    let without_events = {
        let mut s = without_events;
        s.inference = without_shares.inference.clone();
        s
    };
    // Format 1, written before the timeline, is read with an empty one.
    assert!(!data.state.events.events.is_empty(), "the job changes are on the timeline");
    let s = &data.state;
    let old = (&data.last_applied, &data.membership, &s.namespace, &old_notes, &s.training);
    let mut v1 = b"IDSTATE\x01".to_vec();
    v1.extend(postcard::to_allocvec(&old).unwrap());
    assert_eq!(SmData::decode(&v1).unwrap().state, without_events);

    // Format 2, written before the draining nodes, is read without any.
    let old = (&data.last_applied, &data.membership, &s.namespace, &old_notes, &s.training, &s.events);
    let mut v2 = b"IDSTATE\x02".to_vec();
    v2.extend(postcard::to_allocvec(&old).unwrap());
    let mut without_nodes = without_shares.clone();
    without_nodes.nodes = Default::default();
    without_nodes.serving = Default::default();
    assert_eq!(SmData::decode(&v2).unwrap().state, without_nodes);

    // Format 3, written before served models, is read without any.
    assert!(!data.state.serving.models.is_empty(), "a model is served");
    let old = (&data.last_applied, &data.membership, &s.namespace, &old_notes, &s.training, &s.events, &s.nodes);
    let mut v3 = b"IDSTATE\x03".to_vec();
    v3.extend(postcard::to_allocvec(&old).unwrap());
    let mut without_serving = without_shares.clone();
    without_serving.serving = Default::default();
    assert_eq!(SmData::decode(&v3).unwrap().state, without_serving);

    // Format 4, written before served models were placed, is read with
    // each model on every worker, placed where it was ready.
    assert!(data.state.serving.models["m"].placed != data.state.serving.models["m"].ready, "placed apart from ready");
    let old_serving = idunno_state::ServingTableV4::from(&s.serving);
    let old = (&data.last_applied, &data.membership, &s.namespace, &old_jobs, &s.training, &s.events, &s.nodes);
    let mut v4 = b"IDSTATE\x04".to_vec();
    v4.extend(postcard::to_allocvec(&(old, &old_serving)).unwrap());
    let mut unplaced = without_loss.clone();
    for m in unplaced.serving.models.values_mut() {
        (m.workers, m.placed) = (0, m.ready.clone());
    }
    assert_eq!(SmData::decode(&v4).unwrap().state, unplaced);

    // Format 5, written before the jobs' loss and the workers' busy time,
    // is read without them.
    let mut v5 = b"IDSTATE\x05".to_vec();
    v5.extend(postcard::to_allocvec(&(old, &s.serving)).unwrap());
    assert_eq!(SmData::decode(&v5).unwrap().state, without_loss);

    // Format 6, written before sharded input sets, is read without shards.
    assert!(!data.state.inference.jobs["j"].spec.input_shards.is_empty(), "a job has shards");
    let old_specs = idunno_state::JobTableV6::from(&data.state.inference);
    let old = (&data.last_applied, &data.membership, &s.namespace, &old_specs, &s.training, &s.events, &s.nodes);
    let mut v6 = b"IDSTATE\x06".to_vec();
    v6.extend(postcard::to_allocvec(&(old, &s.serving)).unwrap());
    assert_eq!(SmData::decode(&v6).unwrap().state, without_unsharded(&data.state));

    // A format from a newer release is refused by name, not misread.
    let mut newer = bytes.clone();
    newer[7] = 8;
    let e = SmData::decode(&newer).err().unwrap();
    assert!(e.contains("format 8") && e.contains("upgrade"), "{e}");
    assert!(SmData::decode(b"IDSTATE").err().unwrap().contains("ends inside its header"));
}
