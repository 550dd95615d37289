//! The ML layer of idunno: the input and label formats jobs read from SDFS
//! — NumPy `.npy` arrays and IDX files (MNIST's format) — parsed into
//! [`Tensor`]s with errors that name what is wrong (`npy`, `idx`: pure
//! functions over bytes), and ONNX models run on ONNX Runtime (`onnx`).
//! Models trained with candle join with the training issue.

pub mod idx;
pub mod npy;
pub mod onnx;
mod tensor;

pub use tensor::{DType, Tensor};

/// A file that is not a valid array, or one of a kind not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not {expected}: {why}")]
    Malformed { expected: &'static str, why: String },
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },
    #[error("{what}: the header describes {expected} bytes of data but {actual} follow")]
    Length { what: &'static str, expected: usize, actual: usize },
}

/// Read an array in either format, telling them apart by their first bytes.
pub fn read_array(bytes: &[u8]) -> Result<Tensor, FormatError> {
    if bytes.starts_with(npy::MAGIC) {
        npy::read(bytes)
    } else if bytes.len() >= 4 && bytes[0] == 0 && bytes[1] == 0 {
        idx::read(bytes)
    } else {
        Err(FormatError::Malformed {
            expected: "an .npy or IDX array",
            why: format!("it starts with {:02x?}", &bytes[..bytes.len().min(6)]),
        })
    }
}
