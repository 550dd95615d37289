//! The training jobs: their life cycle, groups (generations) and
//! reports.

use serde::{Deserialize, Serialize};

use crate::{
    Applied, EpochRecord, JobState, MAX_BATCH_SIZE, Refusal, Regroup, Reply, Score, TrainGroup, TrainProgress,
    TrainReport, TrainSpec, Training, allowed, distinct, non_empty,
};

/// Training name → training, persistent as the other tables.
pub type Trainings = imbl::OrdMap<String, Training>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingTable {
    /// Job name → definition, group and progress. Job names are one
    /// namespace with the inference jobs'.
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub jobs: Trainings,
}

/// A change to the training jobs (stopping, starting and removing one
/// goes through [`crate::JobCommand`], as for any job).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TrainCommand {
    /// A training job, checked by the node that took the request; it
    /// starts running at once (its group is formed next).
    AddTraining { spec: TrainSpec, now_ms: u64 },
    /// Form generation `generation` of a training group: refused unless it
    /// is the next one, so of two proposers (the leader noticing a death,
    /// a member finding the group stuck) only one wins.
    SetTrainGroup { job: String, generation: u64, workers: Vec<u64>, now_ms: u64 },
    /// Progress of a training group: refused from a generation that is
    /// not the current one, or for a step behind the recorded one.
    ReportTraining { job: String, generation: u64, report: TrainReport, now_ms: u64 },
    /// A training job cannot go on (its error is shown by `job status`).
    FailTraining {
        job: String,
        error: String,
        /// The proposer's clock (the time on the timeline).
        #[serde(default)]
        now_ms: u64,
    },
}

impl TrainCommand {
    /// Every op of this domain, as the wire names it.
    pub const OPS: &[&str] = &["add_training", "set_train_group", "report_training", "fail_training"];
}

impl TrainingTable {
    pub fn apply(&mut self, cmd: TrainCommand) -> Applied {
        match cmd {
            TrainCommand::AddTraining { spec, now_ms } => self.add_training(spec, now_ms),
            TrainCommand::SetTrainGroup { job, generation, workers, now_ms } => {
                self.set_train_group(job, generation, workers, now_ms)
            }
            TrainCommand::ReportTraining { job, generation, report, now_ms } => {
                self.report_training(job, generation, report, now_ms)
            }
            TrainCommand::FailTraining { job, error, .. } => self.fail_training(job, error),
        }
    }

    fn training_mut(&mut self, job: &str) -> Result<&mut Training, Refusal> {
        self.jobs.get_mut(job).ok_or_else(|| Refusal::NoSuchJob { job: job.to_string() })
    }

    pub(crate) fn set_state(&mut self, job: String, state: JobState) -> Applied {
        let t = self.training_mut(&job)?;
        // A finished training is done for good (train again under a
        // new name); its state only changes through its reports.
        let refused = !allowed(t.state, state) || state == JobState::Done || t.state == JobState::Done;
        if refused {
            return Err(Refusal::BadTransition { job, from: t.state, to: state });
        }
        if state == JobState::Running {
            t.progress.error = None;
        }
        // Stopped or failed, the group dissolves (its members see
        // they are out); started again, the leader forms a new one.
        t.group.workers.clear();
        t.state = state;
        Ok(Reply::Done)
    }

    pub(crate) fn remove(&mut self, job: String) -> Applied {
        if self.jobs.get(&job).is_some_and(|t| t.state == JobState::Running) {
            return Err(Refusal::JobRunning { job });
        }
        self.jobs.remove(&job);
        Ok(Reply::Done)
    }

    fn add_training(&mut self, spec: TrainSpec, now_ms: u64) -> Applied {
        non_empty("job name", &spec.name)?;
        non_empty("output model name", &spec.out)?;
        if spec.batch_size == 0 {
            return Err(Refusal::BatchSizeZero);
        }
        if spec.batch_size > MAX_BATCH_SIZE {
            return Err(Refusal::BatchSizeTooLarge { batch_size: spec.batch_size, max: MAX_BATCH_SIZE });
        }
        if spec.epochs == 0 || spec.workers == 0 || spec.samples == 0 || spec.checkpoint_every == 0 {
            return Err(Refusal::BadTraining(
                "epochs, workers, samples and checkpoint_every must be at least 1".into(),
            ));
        }
        if self.jobs.contains_key(&spec.name) {
            return Err(Refusal::JobExists { job: spec.name });
        }
        let progress = TrainProgress { started_at_ms: now_ms, ..Default::default() };
        let t = Training { spec, state: JobState::Running, group: TrainGroup::default(), progress };
        self.jobs.insert(t.spec.name.clone(), t);
        Ok(Reply::Done)
    }

    fn set_train_group(&mut self, job: String, generation: u64, workers: Vec<u64>, now_ms: u64) -> Applied {
        distinct(&workers)?;
        let t = self.training_mut(&job)?;
        if t.state != JobState::Running {
            return Err(Refusal::JobNotRunning { job });
        }
        if generation != t.group.generation + 1 {
            let current = t.group.generation;
            return Err(Refusal::StaleGeneration { job, current, given: generation, wanted: "next".into() });
        }
        if workers.is_empty() {
            return Err(Refusal::Empty { what: "training group".into() });
        }
        let from_step = t.progress.checkpoint.map_or(0, |(_, step)| step);
        // Work after the checkpoint is redone by the new group.
        t.progress.step = from_step;
        t.progress.train = Score::default();
        t.group = TrainGroup { generation, workers: workers.clone() };
        t.progress.regroups.push(Regroup { generation, workers, from_step, at_ms: now_ms });
        Ok(Reply::Done)
    }

    fn report_training(&mut self, job: String, generation: u64, report: TrainReport, now_ms: u64) -> Applied {
        let t = self.training_mut(&job)?;
        if t.state != JobState::Running {
            return Err(Refusal::JobNotRunning { job });
        }
        if generation != t.group.generation || t.group.workers.is_empty() {
            let current = t.group.generation;
            return Err(Refusal::StaleGeneration { job, current, given: generation, wanted: "current one".into() });
        }
        let total = t.spec.total_steps();
        if report.step < t.progress.step || report.step > total {
            return Err(Refusal::BadStep { job, current: t.progress.step, given: report.step, total });
        }
        let spe = t.spec.steps_per_epoch().max(1);
        if report.epoch_end.is_some() && (!report.step.is_multiple_of(spe) || report.step == 0) {
            return Err(Refusal::BadTraining(format!("step {} does not end an epoch", report.step)));
        }
        if report.model_version.is_some() && report.step != total {
            return Err(Refusal::BadTraining(format!("a model after {} of {total} steps", report.step)));
        }
        if let Some(test) = report.epoch_end {
            let epoch = (report.step / spe) as u32;
            t.progress.epochs.retain(|e| e.epoch < epoch);
            t.progress.epochs.push(EpochRecord { epoch, train: report.train, test, at_ms: now_ms });
            t.progress.train = Score::default();
        } else {
            t.progress.train = report.train;
        }
        if let Some(version) = report.checkpoint_version {
            t.progress.checkpoint = Some((version, report.step));
        }
        t.progress.step = report.step;
        if let Some(version) = report.model_version {
            t.progress.model_version = Some(version);
            t.progress.finished_at_ms = now_ms;
            t.state = JobState::Done;
            t.group.workers.clear();
        }
        Ok(Reply::Done)
    }

    fn fail_training(&mut self, job: String, error: String) -> Applied {
        let t = self.training_mut(&job)?;
        if t.state != JobState::Running {
            return Err(Refusal::JobNotRunning { job });
        }
        t.state = JobState::Failed;
        t.group.workers.clear();
        t.progress.error = Some(error);
        Ok(Reply::Done)
    }

    /// The invariants every reachable training table keeps.
    pub fn check(&self) -> Result<(), String> {
        for (name, t) in &self.jobs {
            let p = &t.progress;
            if p.step > t.spec.total_steps() || p.checkpoint.is_some_and(|(_, s)| s > p.step) {
                return Err(format!(
                    "training {name}: step {} or its checkpoint {:?} out of range",
                    p.step, p.checkpoint
                ));
            }
            if (t.state == JobState::Done) != p.model_version.is_some() {
                return Err(format!("training {name}: done without a model, or a model while not done"));
            }
            if distinct(&t.group.workers).is_err() || p.epochs.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
                return Err(format!("training {name}: its group repeats a node or its epochs are out of order"));
            }
        }
        Ok(())
    }
}
