//! What a file may declare before it is believed. Every size, count and
//! shape in a file is hostile until checked: a shape product is computed
//! with checked arithmetic, compared with the bytes actually present, and
//! only then is anything allocated. `docs/limits.md` lists these limits.

use crate::FormatError;

/// Axes an array may have (NumPy's own limit was 32 until 2.0).
pub const MAX_RANK: usize = 32;

/// Bytes an `.npy` header may take. NumPy writes headers of a few dozen
/// bytes, and refuses to read ones over 10,000 by default.
pub const MAX_NPY_HEADER: usize = 64 * 1024;

/// Classes a trained model may output (the same bound as training's
/// labels).
pub const MAX_CLASSES: usize = 1_000_000;

/// Elements one sample of a trained model may have.
pub const MAX_SAMPLE_ELEMENTS: usize = 1 << 28;

/// The number of elements of `shape`, or `None` if the product does not
/// fit in a `usize` (a shape with a zero axis has none, whatever the
/// others say).
pub fn elements(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

/// The bytes of data an array of `shape` with `elem`-byte elements holds,
/// checked for overflow and rank; `expected` names the format in errors.
pub(crate) fn data_bytes(expected: &'static str, shape: &[usize], elem: usize) -> Result<usize, FormatError> {
    if shape.len() > MAX_RANK {
        return Err(FormatError::Malformed {
            expected,
            why: format!("its shape has {} axes; at most {MAX_RANK} are supported", shape.len()),
        });
    }
    elements(shape).and_then(|n| n.checked_mul(elem)).ok_or_else(|| FormatError::Malformed {
        expected,
        why: format!("its shape {shape:?} describes more bytes than any file can hold"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_that_overflow_are_refused_not_wrapped() {
        assert_eq!(elements(&[2, 3, 4]), Some(24));
        assert_eq!(elements(&[]), Some(1));
        assert_eq!(elements(&[1 << 32, 1 << 32]), None);
        assert_eq!(elements(&[2, usize::MAX, 0]), Some(0));
        let err = data_bytes("an .npy file", &[1 << 32, 1 << 31], 4).unwrap_err().to_string();
        assert!(err.contains("more bytes than any file can hold"), "{err}");
        assert!(data_bytes("x", &[1; 33], 1).unwrap_err().to_string().contains("33 axes"));
    }
}
