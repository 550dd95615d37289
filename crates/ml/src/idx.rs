//! The IDX format of MNIST and Fashion-MNIST: two zero bytes, a type code,
//! the number of dimensions, each dimension as a big-endian u32, then the
//! elements, big-endian.

use crate::layout::{Layout, check_length};
use crate::{DType, FormatError, Tensor};

fn bad(why: impl Into<String>) -> FormatError {
    FormatError::Malformed { expected: "an IDX file", why: why.into() }
}

/// The layout of an IDX file of `file_size` bytes from its first bytes
/// (at most 1,024 are needed).
pub fn layout(bytes: &[u8], file_size: u64) -> Result<Layout, FormatError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("it does not start with two zero bytes"));
    }
    let dtype = match bytes[2] {
        0x08 => DType::U8,
        0x09 => DType::I8,
        0x0B => DType::I16,
        0x0C => DType::I32,
        0x0D => DType::F32,
        0x0E => DType::F64,
        t => return Err(FormatError::Unsupported { what: "IDX type code", value: format!("0x{t:02x}") }),
    };
    let ndims = usize::from(bytes[3]);
    let dims_end = 4 + 4 * ndims;
    let dims = bytes.get(4..dims_end).ok_or_else(|| bad(format!("it ends inside its {ndims} dimensions")))?;
    let shape: Vec<usize> =
        dims.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let data_start = dims_end as u64;
    // Checked before anything is allocated: the declared size must be
    // the size present.
    check_length("IDX", "an IDX file", &shape, dtype, data_start, file_size)?;
    // Big-endian on disk, little-endian in a Tensor.
    Ok(Layout { dtype, shape, data_start, big_endian: true })
}

pub fn read(bytes: &[u8]) -> Result<Tensor, FormatError> {
    layout(bytes, bytes.len() as u64)?.decode_all(bytes)
}
