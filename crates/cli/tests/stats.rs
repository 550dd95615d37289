//! The job statistics that `job status` derives — the variance of the
//! processing time and the mean cross-entropy loss — against NumPy on the
//! same values (the assets' virtualenv, `tests/clients/numpy_stats.py`).
//! The end-to-end checks of a running job's loss are in jobs.rs and
//! training.rs.

mod common;

use idunno_ml::{Tensor, npy, scoring};
use serde_json::Value;

/// A deterministic stream of numbers in [0, 1) (a 64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn the_variance_of_the_processing_time_is_numpys() {
    let Some(python) = common::numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(7);
    // Skewed times from 0.2 ms to ~1 s, as queries of a busy worker are.
    let times: Vec<i64> = (0..20_000).map(|_| (200.0 * (8.5 * rng.next()).exp()) as i64).collect();
    let mut h = idunno_state::Histogram::default();
    times.iter().for_each(|t| h.record(*t as u64));
    let file = dir.path().join("times.npy");
    std::fs::write(&file, npy::write(&Tensor::from_i64(vec![times.len()], &times))).unwrap();
    let doc = common::numpy_stats(&python, &["var", file.to_str().unwrap()]);
    // NumPy's is in µs², the summary's in ms².
    let want = doc["var"].as_f64().unwrap() / 1e6;
    let got = h.summary().var;
    assert!(want > 1000.0, "a spread worth checking: {want}");
    assert!((got - want).abs() <= 1e-9 * want, "variance {got} ms², NumPy {want} ms²");
}

#[test]
fn the_loss_of_probabilities_and_of_logits_is_numpys() {
    let Some(python) = common::numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (classes, n) = (10usize, 2_000usize);
    let mut rng = Lcg(11);
    let mut rows = Vec::with_capacity(n * classes);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let logits: Vec<f32> = (0..classes).map(|_| (12.0 * rng.next() - 6.0) as f32).collect();
        let row = match i % 4 {
            // Probabilities, as a softmax layer gives them.
            0 | 1 => {
                let e: Vec<f64> = logits.iter().map(|z| f64::from(*z).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|v| (v / sum) as f32).collect()
            }
            // Logits.
            2 => logits,
            // A sure answer: probabilities with zeros (the floor applies).
            _ => (0..classes).map(|k| if k == i % classes { 1.0 } else { 0.0 }).collect(),
        };
        rows.extend(row);
        // Some inputs have no label; some labels are outside the row.
        labels.push(match i % 23 {
            0 => -1,
            1 => classes as i64 + 3,
            _ => (rng.next() * classes as f64) as i64,
        });
    }
    // A row that is not finite has no loss.
    rows[5 * classes] = f32::NAN;

    let mut sum = 0.0;
    let mut count = 0;
    for (row, label) in rows.chunks(classes).zip(&labels) {
        if let Some(l) = usize::try_from(*label).ok().and_then(|l| scoring::cross_entropy(row, l)) {
            sum += l;
            count += 1;
        }
    }
    let rows_file = dir.path().join("rows.npy");
    let labels_file = dir.path().join("labels.npy");
    std::fs::write(&rows_file, npy::write(&Tensor::from_f32(vec![n, classes], &rows))).unwrap();
    std::fs::write(&labels_file, npy::write(&Tensor::from_i64(vec![n], &labels))).unwrap();
    let doc = common::numpy_stats(&python, &["loss", rows_file.to_str().unwrap(), labels_file.to_str().unwrap()]);
    assert_eq!(doc["count"].as_u64(), Some(count), "{doc}");
    let (want, got) = (doc["loss"].as_f64().unwrap(), sum / count as f64);
    assert!(want > 1.0, "a loss worth checking: {want}");
    assert!((got - want).abs() <= 1e-9 * want, "loss {got}, NumPy {want}");
    assert_eq!(doc["count"], Value::from(count));
}
