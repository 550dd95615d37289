//! The replicated part of training jobs: what to train (`TrainSpec`),
//! who trains it (`TrainGroup`, by generation), and how far it got
//! (`TrainProgress`, changed by `TrainReport`s). The commands that change
//! them are in [`crate::trainings`].

use serde::{Deserialize, Serialize};

use crate::{FileRef, JobState};

/// A training job: what to train on and how (`idunno train`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub name: String,
    /// `mlp` or `cnn`.
    pub arch: String,
    pub inputs: FileRef,
    pub labels: FileRef,
    /// Held-out set for the test accuracy, if given.
    pub test_inputs: Option<FileRef>,
    pub test_labels: Option<FileRef>,
    pub samples: u64,
    pub classes: u32,
    pub epochs: u32,
    pub batch_size: u32,
    /// Workers in the data-parallel group (fewer if fewer are alive).
    pub workers: u32,
    /// The learning rate, as text (the state holds no floats, so every
    /// replica compares bytes).
    pub lr: String,
    /// Seeds the initial weights and every epoch's sample order.
    pub seed: u64,
    /// A checkpoint every this many steps (and at every epoch's end).
    pub checkpoint_every: u64,
    /// SDFS name the trained model is written to.
    pub out: String,
}

impl TrainSpec {
    pub fn steps_per_epoch(&self) -> u64 {
        self.samples.div_ceil(u64::from(self.batch_size).max(1))
    }

    pub fn total_steps(&self) -> u64 {
        self.steps_per_epoch().saturating_mul(u64::from(self.epochs))
    }

    /// Where the checkpoints of this job live in SDFS.
    pub fn checkpoint_file(&self) -> String {
        format!("{}.ckpt", self.name)
    }
}

/// The workers training a job together. A new generation is formed when
/// a member dies (or a member asks, finding the group stuck); members of
/// an older generation stop, and the new one goes on from the last
/// checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainGroup {
    pub generation: u64,
    /// In rank order; rank 0 averages the gradients and writes checkpoints.
    pub workers: Vec<u64>,
}

/// Loss (in millionths, summed over samples) and correct predictions over
/// `count` samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    pub loss_micro: u64,
    pub correct: u64,
    pub count: u64,
}

impl Score {
    pub fn loss(&self) -> Option<f64> {
        (self.count > 0).then(|| self.loss_micro as f64 / 1e6 / self.count as f64)
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.count > 0).then(|| self.correct as f64 / self.count as f64)
    }
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: u32,
    pub train: Score,
    pub test: Option<Score>,
    /// The leader's clock when it was recorded.
    pub at_ms: u64,
}

/// A group formed: when, and from which step it went on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regroup {
    pub generation: u64,
    pub workers: Vec<u64>,
    pub from_step: u64,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainProgress {
    /// Steps done as of the last report (checkpoint or not).
    pub step: u64,
    /// The last checkpoint: its SDFS version and the step it holds.
    pub checkpoint: Option<(u64, u64)>,
    /// This epoch so far.
    pub train: Score,
    pub epochs: Vec<EpochRecord>,
    pub regroups: Vec<Regroup>,
    /// The trained model's SDFS version, once written.
    pub model_version: Option<u64>,
    pub error: Option<String>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Training {
    pub spec: TrainSpec,
    pub state: JobState,
    pub group: TrainGroup,
    pub progress: TrainProgress,
}

impl Training {
    /// The training score of the epoch under way, or of the last finished
    /// one when the new epoch has no step yet.
    pub fn current_score(&self) -> Score {
        if self.progress.train.count > 0 {
            return self.progress.train;
        }
        self.progress.epochs.last().map(|e| e.train).unwrap_or_default()
    }
}

/// One step report of a training group's rank 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps done.
    pub step: u64,
    /// A checkpoint holding exactly `step` steps was written: its version.
    pub checkpoint_version: Option<u64>,
    /// The epoch so far (reset when an epoch ends).
    pub train: Score,
    /// Set when `step` ends an epoch: the held-out score, if any. Left
    /// out of the JSON when not set, so that an epoch's end without a
    /// held-out set (`Some(None)`, `null`) is not read back as no end.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub epoch_end: Option<Option<Score>>,
    /// Set on the last step: the trained model's SDFS version.
    pub model_version: Option<u64>,
}

/// A field that is there, `null` included, is `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
