//! The training jobs, case by case: a command, then what it must answer, with
//! the invariants checked after every step and a refusal checked to leave
//! the state exactly as it was.

mod common;

use common::*;
use idunno_state::{Command, JobCommand, JobState, Refusal, Reply, TrainCommand};

fn training(name: &str) -> Command {
    use idunno_state::{FileRef, TrainSpec};
    let file = |n: &str| FileRef { name: n.into(), version: 1 };
    TrainCommand::AddTraining {
        spec: TrainSpec {
            name: name.into(),
            arch: "mlp".into(),
            inputs: file("x"),
            labels: file("y"),
            samples: 1000,
            classes: 10,
            epochs: 2,
            batch_size: 100,
            workers: 2,
            lr: "0.001".into(),
            seed: 1,
            checkpoint_every: 4,
            out: "m".into(),
            ..Default::default()
        },
        now_ms: 5,
    }
    .into()
}

fn group(generation: u64, workers: &[u64]) -> Command {
    TrainCommand::SetTrainGroup { job: "t".into(), generation, workers: workers.to_vec(), now_ms: 6 }.into()
}

fn report(generation: u64, step: u64, checkpoint: Option<u64>, epoch_end: bool, model: Option<u64>) -> Command {
    use idunno_state::{Score, TrainReport};
    let train = Score { loss_micro: 500_000 * step, correct: step, count: step * 2 };
    let test = Score { loss_micro: 1, correct: 90, count: 100 };
    TrainCommand::ReportTraining {
        job: "t".into(),
        generation,
        report: TrainReport {
            step,
            checkpoint_version: checkpoint,
            train,
            epoch_end: epoch_end.then_some(Some(test)),
            model_version: model,
        },
        now_ms: 7,
    }
    .into()
}

/// A training's life: groups form only as the next generation, reports
/// only from the current one, a new group goes back to the checkpoint,
/// and the model's report ends it.
#[test]
fn training_groups_generations_and_reports() {
    let stale = |current, given, wanted: &str| {
        Err(Refusal::StaleGeneration { job: "t".into(), current, given, wanted: wanted.into() })
    };
    let st = run(vec![
        (training("t"), Ok(Reply::Done)),
        (training("t"), Err(Refusal::JobExists { job: "t".into() })),
        (job("t", 1), Err(Refusal::JobExists { job: "t".into() })),
        (report(0, 1, None, false, None), stale(0, 0, "current one")),
        (group(2, &[1, 2]), stale(0, 2, "next")),
        (group(1, &[1, 1]), Err(Refusal::DuplicateReplica { replicas: vec![1, 1] })),
        (group(1, &[1, 2]), Ok(Reply::Done)),
        (report(1, 4, Some(3), false, None), Ok(Reply::Done)),
        (report(1, 6, None, false, None), Ok(Reply::Done)),
        (report(1, 5, None, false, None), Err(Refusal::BadStep { job: "t".into(), current: 6, given: 5, total: 20 })),
        (report(1, 9, None, true, None), Err(Refusal::BadTraining("step 9 does not end an epoch".into()))),
        (report(1, 10, Some(4), true, None), Ok(Reply::Done)),
        (report(1, 12, None, false, None), Ok(Reply::Done)),
        // Rank 0 died: the next group goes on from the checkpoint at 10.
        (group(2, &[2, 3]), Ok(Reply::Done)),
        (report(1, 14, Some(5), false, None), stale(2, 1, "current one")),
        (report(2, 19, None, false, Some(1)), Err(Refusal::BadTraining("a model after 19 of 20 steps".into()))),
        (report(2, 20, Some(6), true, Some(9)), Ok(Reply::Done)),
        (report(2, 20, None, false, None), Err(Refusal::JobNotRunning { job: "t".into() })),
        (
            state("t", JobState::Running),
            Err(Refusal::BadTransition { job: "t".into(), from: JobState::Done, to: JobState::Running }),
        ),
    ]);
    let t = &st.training.jobs["t"];
    assert_eq!(t.state, JobState::Done);
    assert_eq!(t.progress.model_version, Some(9));
    assert_eq!(t.progress.checkpoint, Some((6, 20)));
    assert_eq!(t.progress.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![1, 2]);
    let from: Vec<u64> = t.progress.regroups.iter().map(|r| r.from_step).collect();
    assert_eq!(from, vec![0, 10]);
    assert!(t.group.workers.is_empty());
}

#[test]
fn a_stopped_training_dissolves_its_group_and_can_be_removed() {
    let st = run(vec![
        (training("t"), Ok(Reply::Done)),
        (group(1, &[1, 2]), Ok(Reply::Done)),
        (JobCommand::RemoveJob { job: "t".into() }.into(), Err(Refusal::JobRunning { job: "t".into() })),
        (state("t", JobState::Stopped), Ok(Reply::Done)),
        (report(1, 4, Some(3), false, None), Err(Refusal::JobNotRunning { job: "t".into() })),
        (state("t", JobState::Running), Ok(Reply::Done)),
        (group(2, &[1, 2]), Ok(Reply::Done)),
        (state("t", JobState::Stopped), Ok(Reply::Done)),
        (
            JobCommand::SetBatchSize { job: "t".into(), batch_size: 5 }.into(),
            Err(Refusal::BadTraining("t is a training job: its batch size is fixed when it is added".into())),
        ),
        (JobCommand::RemoveJob { job: "t".into() }.into(), Ok(Reply::Done)),
    ]);
    assert!(st.training.jobs.is_empty());
}
