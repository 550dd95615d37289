//! Whether an input set feeds a model input, and how its rows are made
//! into what the model takes. Pure functions over shapes.
//!
//! The rule, per sample (the first axis is the sample axis on both
//! sides): the shapes are equal (a free model dimension matches any
//! size), or equal once size-1 axes are dropped, or one side is a flat
//! vector of as many elements as the other (`[28, 28]` into `[784]`, or
//! back). Anything else is refused, with both shapes named: above all a
//! permutation of the axes (channels-last photos for a channels-first
//! model), which would run and give wrong answers for every input. The
//! refusal names the transpose that would fit.

use crate::limits::elements;
use crate::onnx::Signature;
use crate::{DType, Tensor};

fn dims_text(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

fn model_text(s: &[i64]) -> String {
    format!("[{}]", s.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect::<Vec<_>>().join(","))
}

/// Equal shapes, a free model dimension matching any size.
fn same(model: &[i64], set: &[usize]) -> bool {
    model.len() == set.len() && model.iter().zip(set).all(|(m, s)| *m < 0 || *m as u64 == *s as u64)
}

/// The shape without its size-1 axes (free model axes stay).
fn squeeze_model(m: &[i64]) -> Vec<i64> {
    m.iter().copied().filter(|d| *d != 1).collect()
}

fn squeeze_set(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|d| *d != 1).collect()
}

/// The model's per-sample dims if all are fixed.
fn fixed(model: &[i64]) -> Option<Vec<usize>> {
    model.iter().map(|d| usize::try_from(*d).ok()).collect()
}

/// The per-sample shape that samples of shape `set` take to feed a model
/// input whose per-sample shape is `model`, or why they cannot.
pub fn target(model: &[i64], set: &[usize]) -> Result<Vec<usize>, String> {
    let set_n = elements(set).ok_or_else(|| format!("samples of shape {} are too large", dims_text(set)))?;
    if set_n == 0 {
        return Err(format!("samples of shape {} hold no values", dims_text(set)));
    }
    if same(model, set) {
        return Ok(set.to_vec());
    }
    let (sq_model, sq_set) = (squeeze_model(model), squeeze_set(set));
    if same(&sq_model, &sq_set) {
        // The model's shape, its free axes filled in order from the
        // set's axes that are not size 1.
        let mut rest = sq_set.iter();
        return Ok(model
            .iter()
            .map(|d| if *d == 1 { 1 } else { usize::try_from(*d).ok().or(rest.next().copied()).unwrap_or(1) })
            .collect());
    }
    if let Some(m) = fixed(model) {
        let flat = sq_model.len() <= 1 || sq_set.len() <= 1;
        if flat && elements(&m) == Some(set_n) {
            return Ok(m);
        }
    } else if let [free] = model
        && *free < 0
    {
        // A free-length vector takes any sample, flattened.
        return Ok(vec![set_n]);
    }
    Err(mismatch(model, set))
}

/// The refusal: both shapes, and the transpose that would fit if the set
/// holds the model's axes in another order.
fn mismatch(model: &[i64], set: &[usize]) -> String {
    let mut msg = format!("inputs are {} per sample, the model wants {}", dims_text(set), model_text(model));
    if let Some(perm) = fixed(model).and_then(|m| permutation(set, &m)) {
        let channels = |d: usize| matches!(d, 1 | 3 | 4);
        if set.len() == 3 && channels(set[2]) && perm == [2, 0, 1] {
            msg.push_str(": channels-last data for a channels-first model");
        } else if set.len() == 3 && channels(set[0]) && perm == [1, 2, 0] {
            msg.push_str(": channels-first data for a channels-last model");
        } else {
            msg.push_str(": the same axes in another order");
        }
        let per: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
        let whole: Vec<String> = std::iter::once(0).chain(perm.iter().map(|p| p + 1)).map(|p| p.to_string()).collect();
        msg.push_str(&format!(
            "; transpose with ({}) (numpy, whole array: x.transpose({}))",
            per.join(","),
            whole.join(", ")
        ));
    }
    msg
}

/// `p` such that `set[p[i]] == model[i]` for every axis, if `set` is a
/// reordering of `model` (the first unused match wins on repeated sizes,
/// which keeps equal axes in their order: `[224,224,3]` → `(2,0,1)`).
pub fn permutation(set: &[usize], model: &[usize]) -> Option<Vec<usize>> {
    if set.len() != model.len() || set == model {
        return None;
    }
    let mut used = vec![false; set.len()];
    let mut perm = Vec::with_capacity(model.len());
    for m in model {
        let i = (0..set.len()).find(|&i| !used[i] && set[i] == *m)?;
        used[i] = true;
        perm.push(i);
    }
    Some(perm)
}

/// Whether samples of `dtype` and `sample_shape` can feed the model input
/// `sig` (see the module's rule); the element type is the model's or one
/// [`fit`] converts (integers and f64 to f32, integers to i64). The error
/// names both shapes, and the input.
pub fn check_fit(sig: &Signature, dtype: DType, sample_shape: &[usize]) -> Result<(), String> {
    let per_sample = sig.shape.get(1..).unwrap_or(&[]);
    if sig.shape.is_empty() {
        return Err(format!("the model's input {} is a scalar, not a batch of samples", sig.name));
    }
    target(per_sample, sample_shape).map_err(|e| format!("{e} (model input {})", sig.name))?;
    let convertible = match sig.dtype {
        Some(want) if want == dtype => true,
        Some(DType::F32) => true,
        Some(DType::I64) => !matches!(dtype, DType::F32 | DType::F64),
        _ => false,
    };
    if !convertible {
        let want = sig.dtype.map_or("an unsupported type".to_string(), |d| d.to_string());
        return Err(format!("the input set holds {dtype}, the model's input {} expects {want}", sig.name));
    }
    Ok(())
}

/// A batch of samples made into what the model input `sig` takes (see
/// [`check_fit`]): converted and reshaped as needed.
pub fn fit(sig: &Signature, batch: Tensor) -> Result<Tensor, String> {
    check_fit(sig, batch.dtype, batch.sample_shape())?;
    let per_sample = target(&sig.shape[1..], batch.sample_shape())?;
    let shape: Vec<usize> = std::iter::once(batch.samples()).chain(per_sample).collect();
    Ok(match sig.dtype {
        Some(d) if d == batch.dtype => Tensor { shape, ..batch },
        Some(DType::I64) => Tensor::from_i64(shape, &batch.to_i64()),
        _ => Tensor::from_f32(shape, &batch.to_f32()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (model per sample, set per sample) → the target shape, or the
    /// words the refusal must contain.
    #[test]
    fn what_feeds_what() {
        let ok: &[(&[i64], &[usize], &[usize])] = &[
            (&[3, 224, 224], &[3, 224, 224], &[3, 224, 224]),
            (&[-1], &[128], &[128]),
            (&[784], &[28, 28], &[784]),
            (&[28, 28], &[784], &[28, 28]),
            (&[1, 28, 28], &[28, 28], &[1, 28, 28]),
            (&[28, 28], &[1, 28, 28], &[28, 28]),
            (&[1, 784], &[28, 28], &[1, 784]),
            (&[1, -1], &[7], &[1, 7]),
            (&[-1], &[2, 3], &[6]),
            (&[], &[1], &[]),
            (&[4], &[4, 1], &[4]),
        ];
        for (model, set, want) in ok {
            assert_eq!(target(model, set).as_deref(), Ok(*want), "{model:?} ← {set:?}");
        }
        let refused: &[(&[i64], &[usize], &[&str])] = &[
            (
                &[3, 224, 224],
                &[224, 224, 3],
                &[
                    "inputs are [224,224,3] per sample, the model wants [3,224,224]",
                    "channels-last data for a channels-first model",
                    "transpose with (2,0,1)",
                    "x.transpose(0, 3, 1, 2)",
                ],
            ),
            (&[224, 224, 3], &[3, 224, 224], &["channels-first data for a channels-last model", "(1,2,0)"]),
            (&[4, 6], &[6, 4], &["the same axes in another order", "(1,0)"]),
            // Same number of elements, neither side flat: a reshape would
            // scramble the values.
            (&[4, 6], &[3, 8], &["inputs are [3,8] per sample, the model wants [4,6]"]),
            (&[784], &[28, 27], &["the model wants [784]"]),
            (&[-1, 384], &[128, 3], &["the model wants [?,384]"]),
            (&[4], &[0], &["hold no values"]),
        ];
        for (model, set, words) in refused {
            let err = target(model, set).expect_err(&format!("{model:?} ← {set:?} must be refused"));
            for w in *words {
                assert!(err.contains(w), "{err:?} should say {w:?}");
            }
        }
        assert!(!target(&[4, 6], &[3, 8]).unwrap_err().contains("transpose"));
    }

    #[test]
    fn batches_are_reshaped_and_converted() {
        let sig = Signature { name: "x".into(), dtype: Some(DType::F32), shape: vec![-1, 1, 2, 2] };
        let batch = Tensor { dtype: DType::U8, shape: vec![2, 4], data: vec![1, 2, 3, 4, 5, 6, 7, 8] };
        let t = fit(&sig, batch).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![2, 1, 2, 2]));
        assert_eq!(t.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        // [2,2,1] into [1,2,2]: only a size-1 axis moves, which leaves
        // every value where it was.
        let one_channel = Tensor { dtype: DType::F32, shape: vec![1, 2, 2, 1], data: vec![0; 16] };
        assert_eq!(fit(&sig, one_channel).unwrap().shape, vec![1, 1, 2, 2]);
    }
}
