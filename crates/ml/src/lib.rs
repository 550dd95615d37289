//! The ML layer of idunno: the input and label formats jobs read from SDFS
//! — NumPy `.npy` arrays and IDX files (MNIST's format) — parsed into
//! [`Tensor`]s with errors that name what is wrong (`npy`, `idx`: pure
//! functions over bytes; `layout`: where any rows of a file are, from its
//! header alone, so large sets are read by range), ONNX models run on ONNX Runtime (`onnx`), and
//! the models the cluster trains itself on candle (`trained`). [`Model`]
//! is what a worker serves: either kind, told apart by the file's bytes.

pub mod idx;
pub mod layout;
pub mod limits;
pub mod npy;
pub mod onnx;
pub mod scoring;
pub mod shapes;
mod tensor;
pub mod trained;

use onnx::{MlError, OnnxModel, Signature};
use trained::ServedModel;

pub use tensor::{DType, Tensor, TensorView};

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
    layout::layout(bytes, bytes.len() as u64)?.decode_all(bytes)
}

/// A model an inference job serves: an ONNX file, or a model the cluster
/// trained (`idunno train --out`). Both take tensors and give tensors.
pub enum Model {
    Onnx(OnnxModel),
    Trained(ServedModel),
}

impl Model {
    /// Load a model from its bytes, to run with `threads` threads per batch.
    pub fn load(bytes: &[u8], threads: usize) -> Result<Model, MlError> {
        if trained::is_model_file(bytes) {
            return ServedModel::load(bytes, threads).map(Model::Trained);
        }
        OnnxModel::load(bytes, threads).map(Model::Onnx)
    }

    pub fn inputs(&self) -> &[Signature] {
        match self {
            Model::Onnx(m) => m.inputs(),
            Model::Trained(m) => m.inputs(),
        }
    }

    pub fn outputs(&self) -> &[Signature] {
        match self {
            Model::Onnx(m) => m.outputs(),
            Model::Trained(m) => m.outputs(),
        }
    }

    /// Run one batch: one tensor per model input, in the model's order.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, MlError> {
        match self {
            Model::Onnx(m) => m.run(inputs),
            Model::Trained(m) => m.run(inputs),
        }
    }

    /// Run one batch read from borrowed tensors (no copy for an ONNX
    /// model beyond the runtime's own input).
    pub fn run_views(&mut self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>, MlError> {
        match self {
            Model::Onnx(m) => m.run_views(inputs),
            Model::Trained(m) => m.run(&inputs.iter().map(TensorView::to_tensor).collect::<Vec<_>>()),
        }
    }

    /// Give back the memory kept between runs, for a model going idle
    /// ([`OnnxModel::release_memory`]; a trained model keeps none).
    pub fn release_memory(&mut self) -> Result<(), MlError> {
        match self {
            Model::Onnx(m) => m.release_memory(),
            Model::Trained(_) => Ok(()),
        }
    }
}
