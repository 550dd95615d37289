//! Query processing times as the replicated state keeps them: an
//! integer-only histogram, so every replica computes the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds with ~1.6% relative precision
/// (HDR-style: exact below 128 µs, then 64 sub-buckets per power of two),
/// with exact count, sum and sum of squares for mean and deviation.
/// Integer-only, so every replica computes the same bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: BTreeMap<u32, u64>,
    pub count: u64,
    pub sum_us: u64,
    /// Sum of squares, in µs², as a decimal string (it outgrows u64 and
    /// JSON numbers).
    pub sum_sq_us: String,
}

/// The summary `job status` shows (C2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub avg: f64,
    /// Standard deviation (ms) and variance (ms²) over every recorded
    /// time: exact, from the count, sum and sum of squares.
    pub std: f64,
    #[serde(default)]
    pub var: f64,
    pub median: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Histogram {
    fn bucket(us: u64) -> u32 {
        if us < 128 {
            return us as u32;
        }
        let e = 63 - us.leading_zeros() - 6;
        (e << 6) + (us >> e) as u32
    }

    /// The middle of a bucket's range.
    fn value(bucket: u32) -> u64 {
        if bucket < 128 {
            return bucket as u64;
        }
        let e = (bucket >> 6) - 1;
        let m = (bucket & 63) as u64 + 64;
        (m << e) + (1u64 << e) / 2
    }

    pub fn record(&mut self, us: u64) {
        *self.buckets.entry(Self::bucket(us)).or_default() += 1;
        self.count += 1;
        // Times come from workers: a wrong one must not wrap the sum.
        self.sum_us = self.sum_us.saturating_add(us);
        let sq: u128 = self.sum_sq_us.parse::<u128>().unwrap_or(0).saturating_add((us as u128) * (us as u128));
        self.sum_sq_us = sq.to_string();
    }

    /// Add what `other` recorded (another node's histogram of the same
    /// thing).
    pub fn merge(&mut self, other: &Histogram) {
        for (b, c) in &other.buckets {
            let n = self.buckets.entry(*b).or_default();
            *n = n.saturating_add(*c);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        let sq = |s: &str| s.parse::<u128>().unwrap_or(0);
        self.sum_sq_us = sq(&self.sum_sq_us).saturating_add(sq(&other.sum_sq_us)).to_string();
    }

    /// What was recorded after `earlier` (an older copy of this
    /// histogram): bucket counts, count and sum, subtracted. (The sum of
    /// squares is left empty.) A later copy that is not a superset (the job
    /// was removed and added again) gives what it holds.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        if earlier.count > self.count {
            return self.clone();
        }
        let mut buckets = BTreeMap::new();
        for (b, c) in &self.buckets {
            let c = c.saturating_sub(earlier.buckets.get(b).copied().unwrap_or(0));
            if c > 0 {
                buckets.insert(*b, c);
            }
        }
        Histogram {
            buckets,
            count: self.count - earlier.count,
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            sum_sq_us: String::new(),
        }
    }

    /// For each bound (µs, ascending), how many recorded values fall in
    /// buckets up to the one holding the bound: Prometheus's cumulative
    /// `le` counts, exact up to the bucket's width (~1.6%).
    pub fn cumulative(&self, bounds_us: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_us.len());
        let mut buckets = self.buckets.iter().peekable();
        let mut seen = 0;
        for &bound in bounds_us {
            let last = Self::bucket(bound);
            while let Some((_, c)) = buckets.next_if(|(b, _)| **b <= last) {
                seen += c;
            }
            out.push(seen);
        }
        out
    }

    /// The value at quantile `q` (0..=1), in µs.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&b, &c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Self::value(b);
            }
        }
        0
    }

    /// Average, deviation and percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        let n = self.count as f64;
        let mean = self.sum_us as f64 / n;
        let sq: u128 = self.sum_sq_us.parse().unwrap_or(0);
        let var = (sq as f64 / n - mean * mean).max(0.0);
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            avg: mean / 1000.0,
            std: var.sqrt() / 1000.0,
            var: var / 1e6,
            median: ms(self.quantile(0.5)),
            p90: ms(self.quantile(0.9)),
            p95: ms(self.quantile(0.95)),
            p99: ms(self.quantile(0.99)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn cumulative_counts_follow_the_bounds() {
        let mut h = Histogram::default();
        for us in [50, 100, 900, 1_000, 5_000, 70_000] {
            h.record(us);
        }
        assert_eq!(h.cumulative(&[10, 100, 1_000, 10_000, 100_000]), vec![0, 2, 4, 5, 6]);
        assert_eq!(h.cumulative(&[]), Vec::<u64>::new());
        assert_eq!(*h.cumulative(&[u64::MAX]).last().unwrap(), h.count);
    }

    #[test]
    fn deviation_and_variance_are_exact_over_the_recorded_times() {
        let times = [1_250u64, 980, 3_300, 1_010, 77_000, 1_499, 2_003];
        let mut h = Histogram::default();
        for us in times {
            h.record(us);
        }
        let ms: Vec<f64> = times.iter().map(|us| *us as f64 / 1000.0).collect();
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let var = ms.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / ms.len() as f64;
        let l = h.summary();
        assert!((l.avg - mean).abs() < 1e-9, "{l:?}");
        assert!((l.var - var).abs() < 1e-6 * var, "variance {} against {var}", l.var);
        assert!((l.std * l.std - l.var).abs() < 1e-6 * var, "{l:?}");
    }

    #[test]
    fn since_keeps_what_came_after() {
        let mut h = Histogram::default();
        h.record(1_000);
        let earlier = h.clone();
        h.record(100_000);
        h.record(100_000);
        let d = h.since(&earlier);
        assert_eq!((d.count, d.sum_us), (2, 200_000));
        assert_eq!(d.quantile(0.5), h.quantile(0.99));
        // Not a superset: all of it.
        assert_eq!(earlier.since(&h).count, 1);
    }
}
