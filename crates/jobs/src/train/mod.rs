//! Training jobs (`idunno train`): data-parallel, synchronous, checkpointed.
//!
//! - `validate`: the request is checked against the data in SDFS (lengths,
//!   labels, architecture against sample shape) before anything starts.
//! - `group`: on the coordinator leader, which workers train a job
//!   together. A group has a *generation*; a new one is committed when a
//!   member dies or a member finds the group stuck.
//! - `reduce`: the all-reduce. Every step, each member computes the
//!   gradient of its shard of the step's batch; rank 0 sums the vectors
//!   and hands the sum back to every member, which all apply the same
//!   Adam update to identical replicas. Gradients never pass through the
//!   Raft log: only group changes and progress reports do.
//! - `runner`: on every node, a member's loop: fetch the data, start from
//!   the last checkpoint (or the seeded initial weights), step, and (rank
//!   0) write checkpoints to SDFS and report progress.
//!
//! **Invariant:** training is a function of the spec and the checkpoint
//! it resumes from: the same seed gives the same initial weights and
//! sample order on every member, the shards of a batch sum to the whole
//! batch's gradient, so a group of any size, and a group re-formed after
//! a failure, computes the steps a single process would (up to float
//! summation order).

pub(crate) mod group;
pub(crate) mod reduce;
pub(crate) mod runner;
pub(crate) mod validate;

/// Default learning rate (Adam).
pub const DEFAULT_LR: &str = "0.001";
/// Default checkpoint interval, in steps.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 200;

/// f32s as little-endian bytes (the wire form of a reduce vector).
pub(crate) fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_bytes(b: &[u8]) -> Result<Vec<f32>, String> {
    if !b.len().is_multiple_of(4) {
        return Err(format!("{} bytes are not a vector of f32", b.len()));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
