//! The IDX format of MNIST and Fashion-MNIST: two zero bytes, a type code,
//! the number of dimensions, each dimension as a big-endian u32, then the
//! elements, big-endian.

use crate::limits::data_bytes;
use crate::{DType, FormatError, Tensor};

fn bad(why: impl Into<String>) -> FormatError {
    FormatError::Malformed { expected: "an IDX file", why: why.into() }
}

pub fn read(bytes: &[u8]) -> Result<Tensor, FormatError> {
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
    let data = bytes.get(dims_end..).unwrap_or_default();
    // Checked before anything is allocated: the declared size must be
    // the size present.
    let expected = data_bytes("an IDX file", &shape, dtype.size())?;
    if data.len() != expected {
        return Err(FormatError::Length { what: "IDX", expected, actual: data.len() });
    }
    let mut data = data.to_vec();
    for el in data.chunks_exact_mut(dtype.size()) {
        el.reverse(); // big-endian on disk, little-endian in a Tensor
    }
    Ok(Tensor { dtype, shape, data })
}
