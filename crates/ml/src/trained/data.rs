//! What a net trains on and in which order: the data set, each epoch's
//! seeded sample order, and a batch's shard per replica.

use crate::{DType, Tensor};

/// Deterministic uniform numbers in [-1, 1) (SplitMix64): every worker
/// initialises the same net from the same seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Samples and labels as training reads them: the samples as they are in
/// the file (converted to f32 a batch at a time), labels as class indices.
pub struct DataSet {
    /// The samples, when the set is held in memory; `None` when they are
    /// read by range as training goes (a set too large to hold).
    inputs: Option<Tensor>,
    pub y: Vec<u32>,
    pub sample: Vec<usize>,
    pub dtype: DType,
}

impl DataSet {
    /// Inputs and labels parsed from `.npy`/IDX, checked against each other.
    pub fn new(inputs: Tensor, labels: &Tensor, inputs_name: &str, labels_name: &str) -> Result<DataSet, String> {
        let mut d = DataSet::ranged(&inputs.shape, inputs.dtype, labels, inputs_name, labels_name)?;
        d.inputs = Some(inputs);
        Ok(d)
    }

    /// Labels in memory, the samples (of `shape`, `dtype`) left where they
    /// are: the caller reads them by range.
    pub fn ranged(
        shape: &[usize],
        dtype: DType,
        labels: &Tensor,
        inputs_name: &str,
        labels_name: &str,
    ) -> Result<DataSet, String> {
        if shape.len() < 2 {
            return Err(format!("{inputs_name} has shape {shape:?}: not a set of samples"));
        }
        let n = shape[0];
        if labels.samples() != n || labels.shape.len() > 2 || labels.shape.get(1).is_some_and(|d| *d != 1) {
            return Err(format!(
                "{inputs_name} has {n} samples but {labels_name} has shape {:?} (one label per sample is needed)",
                labels.shape
            ));
        }
        if matches!(labels.dtype, DType::F32 | DType::F64) {
            return Err(format!("{labels_name} holds {}; class labels must be integers", labels.dtype));
        }
        let raw = labels.to_i64();
        if let Some(bad) = raw.iter().find(|l| **l < 0 || **l > 1_000_000) {
            return Err(format!("{labels_name} holds the label {bad}; labels are class indices 0, 1, 2, …"));
        }
        let sample = shape[1..].to_vec();
        Ok(DataSet { inputs: None, y: raw.into_iter().map(|l| l as u32).collect(), sample, dtype })
    }

    /// Whether the samples are in memory (else they are read by range).
    pub fn in_memory(&self) -> bool {
        self.inputs.is_some()
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn classes(&self) -> usize {
        self.y.iter().max().map_or(0, |m| *m as usize + 1)
    }

    /// The samples at `idx`, gathered: (inputs as f32, labels).
    pub fn gather(&self, idx: &[u32]) -> Result<(Vec<f32>, Vec<u32>), String> {
        let inputs = self.inputs.as_ref().ok_or("this set's samples are read by range, not held")?;
        let per: usize = self.sample.iter().product();
        let mut x = Vec::with_capacity(idx.len() * per);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend(inputs.rows(i as usize, 1).to_f32());
            y.push(self.y[i as usize]);
        }
        Ok((x, y))
    }
}

/// The order of the samples in epoch `epoch`: a seeded Fisher–Yates
/// shuffle, the same on every worker.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng(seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
    for i in (1..n).rev() {
        let r = (rng.next() + 1.0) / 2.0;
        let j = ((r * (i + 1) as f32) as usize).min(i);
        order.swap(i, j);
    }
    order
}

/// The order of the samples in epoch `epoch` when they are read by range:
/// blocks of `block` consecutive samples (what one chunk of the file
/// holds) in a seeded shuffled order, and the samples of every `window`
/// consecutive blocks of that order shuffled among themselves. A step
/// then reads a few blocks, not a chunk per sample; the same on every
/// worker.
pub fn epoch_order_blocked(n: usize, block: usize, window: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let block = block.max(1);
    let blocks = epoch_order(n.div_ceil(block), seed, epoch);
    let mut order = Vec::with_capacity(n);
    for (w, group) in blocks.chunks(window.max(1)).enumerate() {
        let mut rows: Vec<u32> = group
            .iter()
            .flat_map(|b| (*b as usize * block) as u32..(((*b as usize + 1) * block).min(n)) as u32)
            .collect();
        let mut rng =
            Rng(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        for i in (1..rows.len()).rev() {
            let r = (rng.next() + 1.0) / 2.0;
            let j = ((r * (i + 1) as f32) as usize).min(i);
            rows.swap(i, j);
        }
        order.extend(rows);
    }
    order
}

/// Which part of a batch of `batch` samples rank `rank` of `world`
/// computes: contiguous, sizes differing by at most one.
pub fn shard(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    let base = batch / world;
    let extra = batch % world;
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}
