//! Where an array file keeps its samples, learnt from its first bytes
//! alone: a reader that knows the layout fetches any rows by byte range
//! and never holds the rest of the file.

use std::ops::Range;

use crate::{DType, FormatError, Tensor};

/// The bytes a reader fetches to learn a file's layout: enough for the
/// longest header either format may have (an `.npy` header of at most
/// [`crate::limits::MAX_NPY_HEADER`] bytes after 12 of preamble, an IDX
/// header of at most 4 + 4 × 255).
pub const HEADER_BYTES: usize = 12 + crate::limits::MAX_NPY_HEADER;

/// An array file's element type, shape and where its elements start.
/// Only made by the decoders, which check that the shape's bytes are
/// exactly the bytes after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The file offset of the first element.
    pub data_start: u64,
    /// Elements are stored big-endian (IDX, or `>` in an `.npy` descr).
    pub big_endian: bool,
}

impl Layout {
    /// Number of samples (length of the first axis; 1 for a scalar).
    pub fn samples(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Bytes of one sample (the decoders checked the whole array's bytes
    /// fit, so no product here overflows).
    pub fn row_bytes(&self) -> u64 {
        crate::limits::elements(self.sample_shape()).unwrap_or(0) as u64 * self.dtype.size() as u64
    }

    /// The file bytes of samples `rows` (clamped to the samples there are).
    pub fn byte_range(&self, rows: Range<usize>) -> Range<u64> {
        let n = self.samples();
        let (start, end) = (rows.start.min(n), rows.end.min(n).max(rows.start.min(n)));
        let row = self.row_bytes();
        self.data_start + start as u64 * row..self.data_start + end as u64 * row
    }

    /// `bytes`, the file bytes of `rows` consecutive samples, as a tensor
    /// (little-endian, as every [`Tensor`] is).
    pub fn decode(&self, rows: usize, mut bytes: Vec<u8>) -> Result<Tensor, FormatError> {
        let expected = rows as u64 * self.row_bytes();
        if bytes.len() as u64 != expected {
            return Err(FormatError::Length { what: "rows", expected: expected as usize, actual: bytes.len() });
        }
        let size = self.dtype.size();
        if self.big_endian && size > 1 {
            for el in bytes.chunks_exact_mut(size) {
                el.reverse();
            }
        }
        let mut shape = vec![rows];
        shape.extend_from_slice(self.sample_shape());
        Ok(Tensor { dtype: self.dtype, shape, data: bytes })
    }

    /// The whole array from the whole file.
    pub(crate) fn decode_all(&self, file: &[u8]) -> Result<Tensor, FormatError> {
        let data = file.get(self.data_start as usize..).unwrap_or_default().to_vec();
        let mut t = self.decode(self.samples(), data)?;
        t.shape = self.shape.clone();
        Ok(t)
    }
}

/// The layout of an array file of `file_size` bytes in either format,
/// told apart by its first bytes; `prefix` is its first
/// `min(file_size, HEADER_BYTES)` bytes (or more).
pub fn layout(prefix: &[u8], file_size: u64) -> Result<Layout, FormatError> {
    if prefix.starts_with(crate::npy::MAGIC) {
        crate::npy::layout(prefix, file_size)
    } else if prefix.len() >= 4 && prefix[0] == 0 && prefix[1] == 0 {
        crate::idx::layout(prefix, file_size)
    } else {
        Err(FormatError::Malformed {
            expected: "an .npy or IDX array",
            why: format!("it starts with {:02x?}", &prefix[..prefix.len().min(6)]),
        })
    }
}

/// Check that the bytes after the header are exactly the shape's.
pub(crate) fn check_length(
    what: &'static str,
    expected_name: &'static str,
    shape: &[usize],
    dtype: DType,
    data_start: u64,
    file_size: u64,
) -> Result<(), FormatError> {
    let expected = crate::limits::data_bytes(expected_name, shape, dtype.size())?;
    let actual = file_size.saturating_sub(data_start);
    if actual != expected as u64 {
        return Err(FormatError::Length { what, expected, actual: actual as usize });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_by_byte_range_and_decoded_alone() {
        let t = Tensor::from_f32(vec![5, 3], &(0..15).map(|v| v as f32).collect::<Vec<_>>());
        let file = crate::npy::write(&t);
        let l = layout(&file[..HEADER_BYTES.min(file.len())], file.len() as u64).unwrap();
        assert_eq!((l.samples(), l.row_bytes()), (5, 12));
        let r = l.byte_range(1..4);
        let rows = l.decode(3, file[r.start as usize..r.end as usize].to_vec()).unwrap();
        assert_eq!(rows, t.rows(1, 3));
        // Past the end: clamped, never beyond the file.
        assert_eq!(l.byte_range(4..9).end, file.len() as u64);
        assert!(l.byte_range(7..9).is_empty());
        // Bytes that are not the rows asked for are refused.
        assert!(l.decode(2, vec![0; 12]).is_err());
    }

    #[test]
    fn a_prefix_is_enough_and_the_size_must_match_the_shape() {
        let t = Tensor::from_f32(vec![1000, 4], &[1.0; 4000]);
        let file = crate::npy::write(&t);
        let prefix = &file[..200];
        assert_eq!(layout(prefix, file.len() as u64).unwrap().shape, vec![1000, 4]);
        let short = layout(prefix, file.len() as u64 - 1).unwrap_err();
        assert!(matches!(short, FormatError::Length { .. }), "{short}");
        assert!(layout(b"PK\x03\x04", 100).unwrap_err().to_string().contains("an .npy or IDX array"));
    }
}
