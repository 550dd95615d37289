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
