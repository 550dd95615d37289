//! How a classifier's output row is scored against its label: the
//! predicted class and the cross-entropy loss. Pure functions over one
//! row, the same for ONNX models and the cluster's own.
//!
//! **The loss rule.** A row whose values are all in `[0, 1]` and sum to
//! 1 (within [`SUM_TOLERANCE`]) is taken as probabilities: the loss is
//! `-ln(max(p[label], PROBABILITY_FLOOR))`. Any other row is taken as
//! logits, and softmax is applied first: the loss is
//! `ln(Σ exp(x_i)) - x[label]`, computed stably in f64. A row with a
//! value that is not finite, or a label outside the row, has no loss.

/// How far from 1 a row's sum may be for the row to count as
/// probabilities (an f32 softmax over 1,000 classes sums to 1 within
/// about 1e-5).
pub const SUM_TOLERANCE: f64 = 1e-3;

/// The smallest probability the loss takes the logarithm of (Keras's
/// epsilon), so a confidently wrong answer costs about 16.1, not infinity.
pub const PROBABILITY_FLOOR: f64 = 1e-7;

/// The index of the largest value (the first of equals); 0 for an empty
/// row.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Whether the row reads as a probability distribution (see the module's
/// rule).
pub fn is_probabilities(row: &[f32]) -> bool {
    let in_range = row.iter().all(|v| (0.0..=1.0).contains(v));
    let sum: f64 = row.iter().map(|v| f64::from(*v)).sum();
    in_range && (sum - 1.0).abs() <= SUM_TOLERANCE
}

/// The cross-entropy loss of a row against its label, by the module's
/// rule; `None` when there is none to give.
pub fn cross_entropy(row: &[f32], label: usize) -> Option<f64> {
    let x = f64::from(*row.get(label)?);
    if !row.iter().all(|v| v.is_finite()) {
        return None;
    }
    if is_probabilities(row) {
        return Some(-x.max(PROBABILITY_FLOOR).ln());
    }
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
    let sum: f64 = row.iter().map(|v| (f64::from(*v) - max).exp()).sum();
    Some(sum.ln() + max - x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_and_logits_each_by_their_rule() {
        // Probabilities: the negative log of the label's.
        let p = [0.1f32, 0.7, 0.2];
        assert!(is_probabilities(&p));
        assert!((cross_entropy(&p, 1).unwrap() - -(0.7f32 as f64).ln()).abs() < 1e-12);
        // A sure wrong answer is capped, not infinite.
        let sure = [1.0f32, 0.0];
        assert!((cross_entropy(&sure, 1).unwrap() - -(1e-7f64).ln()).abs() < 1e-9);
        // Logits: softmax first. ln(e^1 + e^2 + e^3) - 2.
        let z = [1.0f32, 2.0, 3.0];
        assert!(!is_probabilities(&z));
        let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 2.0;
        assert!((cross_entropy(&z, 1).unwrap() - want).abs() < 1e-12);
        // Large logits do not overflow.
        let big = [1000.0f32, 0.0];
        assert!(cross_entropy(&big, 0).unwrap().abs() < 1e-12);
        assert!((cross_entropy(&big, 1).unwrap() - 1000.0).abs() < 1e-9);
        // Negative values are logits even if they sum to 1.
        assert!(!is_probabilities(&[2.0, -1.0]));
    }

    #[test]
    fn rows_without_a_loss() {
        assert_eq!(cross_entropy(&[0.5, 0.5], 2), None, "label outside the row");
        assert_eq!(cross_entropy(&[], 0), None);
        assert_eq!(cross_entropy(&[f32::NAN, 1.0], 1), None);
        assert_eq!(cross_entropy(&[f32::INFINITY, 1.0], 1), None);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
