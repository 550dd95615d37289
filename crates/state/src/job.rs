//! What an inference job is: its definition (`JobSpec`), life cycle
//! (`JobState`) and progress (`JobProgress`, the single source of truth
//! for exactly-once counting). The commands that change them are in
//! [`crate::jobs`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Histogram, JobResults, MAX_BATCH_SIZE};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// SDFS name of the model.
    pub model: String,
    /// The model version the job runs, pinned at `job add` (0: unpinned,
    /// only in hand-written commands) so a later put cannot change a
    /// running job under its workers.
    #[serde(default)]
    pub model_version: u64,
    /// SDFS name of the input set (for a model with several inputs, the
    /// files joined by commas, in the model's input order).
    pub inputs: String,
    /// One file per model input, in the model's order, versions pinned.
    #[serde(default)]
    pub input_files: Vec<FileRef>,
    /// SDFS name of the labels, if any.
    pub labels: Option<String>,
    #[serde(default)]
    pub labels_version: u64,
    pub batch_size: u32,
    /// Samples in the input set: a pass is done when all are.
    #[serde(default)]
    pub samples: u64,
    /// Passes over the input set before the job is done; none: loop.
    #[serde(default)]
    pub passes: Option<u64>,
    #[serde(default)]
    pub output: OutputKind,
    /// The largest batch whose outputs fit in one message, as `job add`
    /// measured the model's outputs (0: not known, [`MAX_BATCH_SIZE`]).
    #[serde(default)]
    pub max_batch: u32,
    /// The order in which a sample's axes are given to the model (empty:
    /// as they are): asked for explicitly (`job add --transpose`), never
    /// guessed.
    #[serde(default)]
    pub transpose: Vec<u32>,
    /// For each model input (as `input_files`) given as several shards —
    /// a name pattern, or a `.shards` list — its shards in order, versions
    /// pinned; empty for an input given as one file (and for every input
    /// of a job without shards).
    #[serde(default)]
    pub input_shards: Vec<Vec<Shard>>,
    /// The labels' shards, if they were given as several.
    #[serde(default)]
    pub label_shards: Vec<Shard>,
}

/// One file of a sharded input set: `samples` consecutive samples of the
/// set, following the shards before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub name: String,
    pub version: u64,
    pub samples: u64,
}

/// The shards holding samples `first .. first + len` of a set cut into
/// `shards`: (shard index, its first sample wanted, how many), in order.
/// Samples past the last shard are left out.
pub fn shard_pieces(shards: &[Shard], first: u64, len: u64) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    let (mut at, end) = (0u64, first.saturating_add(len));
    for (i, s) in shards.iter().enumerate() {
        let next = at.saturating_add(s.samples);
        let (from, to) = (first.max(at), end.min(next));
        if from < to {
            out.push((i, from - at, to - from));
        }
        if next >= end {
            break;
        }
        at = next;
    }
    out
}

impl JobSpec {
    /// The largest batch size this job takes.
    pub fn batch_limit(&self) -> u32 {
        if self.max_batch == 0 { MAX_BATCH_SIZE } else { self.max_batch.min(MAX_BATCH_SIZE) }
    }
}

/// One SDFS file version a job reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub version: u64,
}

/// What a result row holds per input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The predicted class: the index of the largest value of the first
    /// output (or the value itself when the model outputs one number).
    #[default]
    Class,
    /// The first output's values for the input.
    Vector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Added,
    Running,
    Stopped,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    pub state: JobState,
    pub progress: JobProgress,
    /// Where the counted queries' outputs are (see [`JobResults`]).
    #[serde(default)]
    pub results: JobResults,
}

/// How far a job got, changed only by committed query completions: the
/// single source of truth for exactly-once accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub queries_done: u64,
    pub inputs_done: u64,
    /// The pass under way (0-based): the pass of the first input not
    /// done. Later passes may already be partly done.
    #[serde(default)]
    pub pass: u64,
    /// Work done, as ranges `[start, end)` of positions in the job's
    /// stream of inputs (position `k` is input `k % samples` of pass
    /// `k / samples`): sorted, disjoint, merged. A query overlapping them
    /// is a repeat and is not counted. Passes need no barrier: a worker may
    /// run the next pass while the last queries of this one finish.
    #[serde(default)]
    pub done: Vec<(u64, u64)>,
    /// Inputs with a known label, and how many of those were predicted
    /// right (accuracy = correct / labeled).
    #[serde(default)]
    pub labeled: u64,
    #[serde(default)]
    pub correct: u64,
    /// Query processing times.
    #[serde(default)]
    pub latency: Histogram,
    /// Queries completed per 100 ms slot of the leader's clock, for the
    /// last [`RATE_WINDOW_MS`]: the query rate.
    #[serde(default)]
    pub recent: BTreeMap<u64, u64>,
    /// The leader's clock when the job last started (ms since epoch).
    #[serde(default)]
    pub started_at_ms: u64,
    /// Why the job failed (cleared when it runs again).
    #[serde(default)]
    pub error: Option<String>,
    /// Labelled inputs that had a cross-entropy loss (a classifier's
    /// output rows), and the sum of their losses in millionths: the mean
    /// loss is [`JobProgress::loss`].
    #[serde(default)]
    pub loss_count: u64,
    #[serde(default)]
    pub loss_micro: u64,
}

/// The window of the query rate (SPEC: queries/s over the last 10 s).
pub const RATE_WINDOW_MS: u64 = 10_000;
pub(crate) const RATE_SLOT_MS: u64 = 100;

impl JobProgress {
    /// Whether input range `[start, start + len)` overlaps what is done.
    pub fn overlaps_done(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.done.iter().any(|&(s, e)| s < end && start < e)
    }

    pub(crate) fn mark_done(&mut self, start: u64, len: u64) {
        self.done.push((start, start + len));
        self.done.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.done.len());
        for &(s, e) in &self.done {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.done = merged;
    }

    /// Queries per second over the last [`RATE_WINDOW_MS`] before `now_ms`
    /// (or since the job started, if that is more recent).
    /// The mean cross-entropy loss of the counted inputs that have one.
    pub fn loss(&self) -> Option<f64> {
        (self.loss_count > 0).then(|| self.loss_micro as f64 / 1e6 / self.loss_count as f64)
    }

    pub fn query_rate(&self, now_ms: u64) -> f64 {
        let from_slot = now_ms.saturating_sub(RATE_WINDOW_MS) / RATE_SLOT_MS;
        let n: u64 = self.recent.range(from_slot + 1..).map(|(_, c)| c).sum();
        let window = RATE_WINDOW_MS.min(now_ms.saturating_sub(self.started_at_ms)).max(1000);
        n as f64 * 1000.0 / window as f64
    }
}

/// One finished query as the leader commits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneQuery {
    /// First position in the job's input stream (see
    /// [`JobProgress::done`]) and number of inputs; a query never spans
    /// two passes.
    pub start: u64,
    pub len: u64,
    /// Processing time on the worker.
    pub latency_us: u64,
    /// Inputs with a label, and how many were predicted right.
    pub labeled: u64,
    pub correct: u64,
    /// Labelled inputs with a loss, and the sum of their losses in
    /// millionths.
    #[serde(default)]
    pub loss_count: u64,
    #[serde(default)]
    pub loss_micro: u64,
}

/// What the scheduler measured and predicted for a job when it last
/// recorded the assignments (integers, so replicas compare exactly).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentNote {
    /// Processing time per query (moving average), µs.
    pub cost_us: Option<u64>,
    /// The query rate the fair split predicts, in thousandths of a query/s.
    pub predicted_mqps: Option<u64>,
    /// (worker, thousandths of its busy time spent on this job in the
    /// last 10 s). A list, not a map: integer map keys do not survive the
    /// tagged `Command` enum's JSON.
    pub shares_permille: Vec<(u64, u32)>,
    /// (worker, thousandths of this job's queries in the last 10 s that
    /// it ran): workers with more slots, or faster ones, run more.
    #[serde(default)]
    pub queries_permille: Vec<(u64, u32)>,
    /// (worker, its query slots) for the workers above.
    #[serde(default)]
    pub slots: Vec<(u64, u32)>,
    /// (worker, thousandths of its slots' time spent running queries of
    /// any job in the last 10 s): the prediction assumes all of it.
    #[serde(default)]
    pub busy_permille: Vec<(u64, u32)>,
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn samples_map_to_the_shards_that_hold_them() {
        let s = |samples| Shard { name: String::new(), version: 1, samples };
        let shards = [s(10), s(0), s(5), s(10)];
        assert_eq!(shard_pieces(&shards, 0, 4), vec![(0, 0, 4)]);
        assert_eq!(shard_pieces(&shards, 8, 10), vec![(0, 8, 2), (2, 0, 5), (3, 0, 3)]);
        assert_eq!(shard_pieces(&shards, 15, 10), vec![(3, 0, 10)]);
        assert_eq!(shard_pieces(&shards, 20, 10), vec![(3, 5, 5)], "past the end is left out");
        assert!(shard_pieces(&shards, 25, 3).is_empty());
        assert!(shard_pieces(&shards, 3, 0).is_empty());
    }
}
