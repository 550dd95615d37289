//! Where a job's counted outputs are: SDFS files written once each. Every
//! flush of the leader writes one *segment* (the rows of the queries it
//! counts) and names it in the same `CompleteQueries` command, so a
//! segment is part of the results exactly when its queries are counted.
//! When a job stops, is done or fails, the leader compacts its segments
//! into one *base* file (`<job>.results`) and drops them; segments whose
//! every row a later pass replaced are dropped without rewriting.
//!
//! Which rows are current is a pure function of the job's done ranges
//! ([`is_current`]): readers and compaction need no table in memory.

use serde::{Deserialize, Serialize};

use crate::{FileRef, Job, Refusal};

/// A job's results: the compacted base file, then the segments counted
/// since, in the order they were counted. A persistent vector, so the
/// state published after every commit shares it instead of copying it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResults {
    #[serde(default)]
    pub base: Option<FileRef>,
    #[serde(default, deserialize_with = "crate::bounded::vector")]
    pub segments: imbl::Vector<ResultSegment>,
}

impl JobResults {
    /// The files holding the rows, oldest first: the base, then the
    /// segments.
    pub fn files(&self) -> Vec<FileRef> {
        self.base.iter().cloned().chain(self.segments.iter().map(|s| s.file.clone())).collect()
    }
}

/// One flush's rows, written once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultSegment {
    pub file: FileRef,
    /// The number of its first query, and how many queries it holds.
    pub first_query: u64,
    pub queries: u64,
    /// Rows (one per input of its queries) and the file's size.
    pub rows: u64,
    pub bytes: u64,
    /// The latest pass any of its rows belongs to: once the pass after it
    /// is wholly done, every row here has a newer one.
    pub last_pass: u64,
}

/// Whether the row of input `input` from pass `pass` is the one a reader
/// keeps: no later pass has that input done. `done` are a job's done
/// ranges of stream positions (sorted, disjoint), `samples` its inputs
/// per pass.
pub fn is_current(done: &[(u64, u64)], samples: u64, pass: u64, input: u64) -> bool {
    let samples = samples.max(1);
    let Some(from) = pass.checked_add(1).and_then(|p| p.checked_mul(samples)) else { return true };
    let first = done.partition_point(|&(_, e)| e <= from);
    done[first..].iter().all(|&(s, e)| {
        // The first pass k with k·samples + input ≥ max(s, from).
        let lo = s.max(from);
        let k = lo.saturating_sub(input).div_ceil(samples);
        k.checked_mul(samples).and_then(|p| p.checked_add(input)).is_none_or(|pos| pos >= e)
    })
}

/// Whether every position of pass `pass` is done.
pub fn pass_done(done: &[(u64, u64)], samples: u64, pass: u64) -> bool {
    let samples = samples.max(1);
    let (Some(s), Some(e)) = (pass.checked_mul(samples), pass.checked_add(1).and_then(|p| p.checked_mul(samples)))
    else {
        return false;
    };
    done.iter().any(|&(ds, de)| ds <= s && e <= de)
}

impl Job {
    /// Name `segment` as the results of the queries about to be counted
    /// (numbers `first_query …`, `queries` of them, `rows` inputs).
    pub(crate) fn check_segment(
        &self,
        segment: &ResultSegment,
        first_query: u64,
        queries: u64,
        rows: u64,
    ) -> Result<(), Refusal> {
        let fits = segment.first_query == first_query && segment.queries == queries && segment.rows == rows;
        if !fits || segment.file.name.trim().is_empty() || segment.file.version == 0 {
            return Err(Refusal::BadResults {
                job: self.spec.name.clone(),
                reason: format!(
                    "segment {} (queries {} +{}, {} rows) does not describe queries {first_query} +{queries} ({rows} rows)",
                    segment.file.name, segment.first_query, segment.queries, segment.rows
                ),
            });
        }
        Ok(())
    }

    /// Drop the segments written in `files` (gone from the results, not
    /// from SDFS: the leader deletes them next).
    pub(crate) fn drop_segments(&mut self, files: &[FileRef]) {
        self.results.segments.retain(|s| !files.contains(&s.file));
    }

    /// Replace the base and the first segments, which `base` now holds.
    pub(crate) fn compact(
        &mut self,
        expect_base: Option<FileRef>,
        base: FileRef,
        segments: &[FileRef],
    ) -> Result<(), Refusal> {
        let r = &self.results;
        let prefix = r.segments.len() >= segments.len() && r.segments.iter().zip(segments).all(|(s, f)| s.file == *f);
        if r.base != expect_base || !prefix {
            return Err(Refusal::BadResults {
                job: self.spec.name.clone(),
                reason: "the results changed while they were compacted".into(),
            });
        }
        if base.name.trim().is_empty() || base.version == 0 {
            return Err(Refusal::BadResults { job: self.spec.name.clone(), reason: "no base file".into() });
        }
        let rest = self.results.segments.split_off(segments.len());
        self.results = JobResults { base: Some(base), segments: rest };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule, by brute force over positions.
    fn current_slow(done: &[(u64, u64)], samples: u64, pass: u64, input: u64) -> bool {
        (pass + 1..pass + 20).all(|k| {
            let pos = k * samples + input;
            !done.iter().any(|&(s, e)| s <= pos && pos < e)
        })
    }

    #[test]
    fn a_row_is_current_until_a_later_pass_has_its_input() {
        let samples = 5;
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![],
            vec![(0, 5)],
            vec![(0, 7)],
            vec![(0, 5), (8, 9)],
            vec![(0, 10), (12, 13), (21, 24)],
            vec![(3, 4), (9, 16), (30, 40)],
        ];
        for done in &cases {
            for pass in 0..6 {
                for input in 0..samples {
                    assert_eq!(
                        is_current(done, samples, pass, input),
                        current_slow(done, samples, pass, input),
                        "done {done:?}, pass {pass}, input {input}"
                    );
                }
            }
        }
        assert!(pass_done(&[(0, 12)], 5, 1) && !pass_done(&[(0, 12)], 5, 2) && !pass_done(&[(6, 12)], 5, 1));
        assert!(is_current(&[(0, u64::MAX)], 5, u64::MAX, 3), "no pass after the last");
    }
}
