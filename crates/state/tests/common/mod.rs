//! Helpers shared by the state machine's tests: commands, and a runner
//! that checks every step's answer, the invariants after it, and that a
//! refusal left the state exactly as it was.

#![allow(dead_code)]

use idunno_state::{ClusterState, Command, FileCommand, JobCommand, JobSpec, JobState, Refusal, Reply};

pub fn put(name: &str, replicas: &[u64]) -> Command {
    FileCommand::CommitFileVersion {
        name: name.into(),
        size: 10,
        blake3: "ab".into(),
        replicas: replicas.to_vec(),
        keep: 5,
        now_ms: 1,
    }
    .into()
}

pub fn job(name: &str, batch: u32) -> Command {
    JobCommand::AddJob {
        spec: JobSpec {
            name: name.into(),
            model: "m.onnx".into(),
            inputs: "x.npy".into(),
            labels: None,
            batch_size: batch,
            ..Default::default()
        },
    }
    .into()
}

pub fn state(job: &str, s: JobState) -> Command {
    JobCommand::SetJobState { job: job.into(), state: s, now_ms: 0 }.into()
}

/// Run `steps`; each expects Ok(reply) or a refusal.
pub fn run(steps: Vec<(Command, Result<Reply, Refusal>)>) -> ClusterState {
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

pub fn committed(version: u64, dropped: &[u64]) -> Result<Reply, Refusal> {
    Ok(Reply::Committed { version, dropped: dropped.to_vec() })
}
