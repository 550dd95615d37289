//! ONNX models on ONNX Runtime, through the `ort` crate loading the
//! `libonnxruntime` shared library at run time (no build-time download).
//!
//! The library is found at `$ORT_DYLIB_PATH`, else where `scripts/assets`
//! puts it (`$IDUNNO_ASSETS/lib`, default `~/.cache/idunno/assets/lib`).
//! Without it, loading a model fails with an error that names the path
//! tried and the variable to set.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

pub use crate::shapes::{check_fit, fit};
use crate::{DType, Tensor, TensorView};

/// The library file name of the ONNX Runtime build idunno uses.
pub const ORT_LIBRARY: &str = "libonnxruntime.so.1.31.1";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlError {
    /// The runtime library is not there; nothing can run.
    #[error(
        "ONNX Runtime library not found at {path}: set ORT_DYLIB_PATH to a libonnxruntime.so (scripts/assets fetches one)"
    )]
    RuntimeMissing { path: String },
    #[error("ONNX Runtime at {path} could not be loaded: {reason}")]
    RuntimeBroken { path: String, reason: String },
    /// The bytes are not a model this runtime can load.
    #[error("not a loadable ONNX model: {0}")]
    BadModel(String),
    /// Inputs that do not fit the model; nothing ran.
    #[error("{0}")]
    BadInput(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// Where `scripts/assets` puts models and libraries: `$IDUNNO_ASSETS`,
/// default `~/.cache/idunno/assets`.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("IDUNNO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/idunno/assets"))
}

/// Where the runtime library is looked for.
pub fn library_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) => PathBuf::from(p),
        None => assets_dir().join("lib").join(ORT_LIBRARY),
    }
}

/// Load the runtime library at `path`. Only the first successful load in
/// a process takes effect; [`runtime`] is the way in.
pub fn load_runtime(path: &Path) -> Result<Environment, MlError> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(MlError::RuntimeMissing { path: shown });
    }
    let broken = |e: &dyn std::fmt::Display| MlError::RuntimeBroken { path: shown.clone(), reason: e.to_string() };
    ort::init_from(path).map_err(|e| broken(&e))?.with_name("idunno").build().map_err(|e| broken(&e))
}

/// The process-wide runtime, loaded on first use from [`library_path`].
pub fn runtime() -> Result<&'static Environment, MlError> {
    static ENV: OnceLock<Result<Environment, MlError>> = OnceLock::new();
    ENV.get_or_init(|| load_runtime(&library_path())).as_ref().map_err(Clone::clone)
}

/// One input or output of a model: its name, element type, and shape
/// (`-1` where the model leaves a dimension free, like the batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Vec<i64>,
}

impl Signature {
    fn of(name: &str, t: &ValueType) -> Signature {
        let dtype = t.tensor_type().and_then(dtype_of);
        let shape = t.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        Signature { name: name.to_string(), dtype, shape }
    }

    /// Whether a tensor of `shape` fits (same rank, fixed dims equal).
    pub fn accepts(&self, shape: &[usize]) -> bool {
        self.shape.len() == shape.len()
            && self.shape.iter().zip(shape).all(|(want, got)| *want < 0 || *want as usize == *got)
    }
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        _ => return None,
    })
}

fn shape_text(s: &[i64]) -> String {
    let dims: Vec<String> = s.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
    format!("[{}]", dims.join(", "))
}

/// A loaded ONNX model, ready to run batches.
pub struct OnnxModel {
    session: Session,
    inputs: Vec<Signature>,
    outputs: Vec<Signature>,
    /// Whether it ran since its memory was last released.
    ran: bool,
}

impl OnnxModel {
    /// Load a model from its bytes, to run with `threads` threads per batch
    /// (on a small machine several single-thread models beat one wide one).
    pub fn load(bytes: &[u8], threads: usize) -> Result<OnnxModel, MlError> {
        let env = runtime()?;
        let bad = |e: ort::Error| MlError::BadModel(e.to_string());
        let session = Session::builder(env)
            .map_err(bad)?
            .with_intra_threads(threads.max(1))
            .map_err(|e| MlError::BadModel(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| MlError::BadModel(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(bad)?;
        let inputs = session.inputs().iter().map(|o| Signature::of(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| Signature::of(o.name(), o.dtype())).collect();
        Ok(OnnxModel { session, inputs, outputs, ran: false })
    }

    pub fn inputs(&self) -> &[Signature] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Signature] {
        &self.outputs
    }

    /// Run one batch: one tensor per model input, in the model's order.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, MlError> {
        self.run_views(&inputs.iter().map(Tensor::view).collect::<Vec<_>>())
    }

    /// [`OnnxModel::run`] on borrowed tensors.
    pub fn run_views(&mut self, inputs: &[TensorView<'_>]) -> Result<Vec<Tensor>, MlError> {
        if inputs.len() != self.inputs.len() {
            let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(MlError::BadInput(format!(
                "the model takes {} input(s) ({}), {} given",
                self.inputs.len(),
                names.join(", "),
                inputs.len()
            )));
        }
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (sig, t) in self.inputs.iter().zip(inputs) {
            if sig.dtype != Some(t.dtype) {
                return Err(MlError::BadInput(format!(
                    "input {} is {}, the model expects {}",
                    sig.name,
                    t.dtype,
                    sig.dtype.map_or("an unsupported type".to_string(), |d| d.to_string())
                )));
            }
            if !sig.accepts(t.shape) {
                let got: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
                return Err(MlError::BadInput(format!(
                    "input {} has shape {}, the model expects {}",
                    sig.name,
                    shape_text(&got),
                    shape_text(&sig.shape)
                )));
            }
            values.push((sig.name.clone(), to_value(t)?));
        }
        self.ran = true;
        let outputs = self.session.run(values).map_err(|e| MlError::Run(e.to_string()))?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for sig in &self.outputs {
            let v = outputs.get(&sig.name).ok_or_else(|| MlError::Run(format!("no output {}", sig.name)))?;
            out.push(from_value(v)?);
        }
        Ok(out)
    }
}

impl OnnxModel {
    /// Give the memory ONNX Runtime keeps for its runs' intermediate
    /// tensors (its arena, which only grows) back to the allocator, for a
    /// model going idle; nothing to do if it has not run since the last
    /// time. The runtime shrinks its arena only at the end of a run, so
    /// this runs the model once on a single row of zeros (free dimensions
    /// taken as 1). The next real run pays for faulting its memory in
    /// again.
    pub fn release_memory(&mut self) -> Result<(), MlError> {
        if !std::mem::take(&mut self.ran) {
            return Ok(());
        }
        let mut zeros: Vec<Tensor> = Vec::with_capacity(self.inputs.len());
        for sig in &self.inputs {
            let Some(dtype) = sig.dtype else {
                return Err(MlError::Run(format!("input {} has an unsupported type", sig.name)));
            };
            let shape: Vec<usize> = sig.shape.iter().map(|d| (*d).max(1) as usize).collect();
            // The shape is the model file's: bounded before it sizes a buffer.
            let bytes = crate::limits::elements(&shape)
                .filter(|n| *n <= crate::limits::MAX_SAMPLE_ELEMENTS)
                .and_then(|n| n.checked_mul(dtype.size()))
                .ok_or_else(|| MlError::Run(format!("input {} of shape {:?} is too large to run", sig.name, shape)))?;
            zeros.push(Tensor { dtype, shape, data: vec![0; bytes] });
        }
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(zeros.len());
        for (sig, zero) in self.inputs.iter().zip(&zeros) {
            values.push((sig.name.clone(), to_value(&zero.view())?));
        }
        let mut options = ort::session::RunOptions::new().map_err(|e| MlError::Run(e.to_string()))?;
        options.set("memory.enable_memory_arena_shrinkage", "cpu:0").map_err(|e| MlError::Run(e.to_string()))?;
        self.session.run_with_options(values, &options).map_err(|e| MlError::Run(e.to_string()))?;
        Ok(())
    }
}

/// An input for ONNX Runtime: the view's own bytes where they can be
/// (a little-endian host and bytes aligned for the element type, as a
/// request's body and a stacked batch are), else a converted copy.
fn to_value<'a>(t: &TensorView<'a>) -> Result<SessionInputValue<'a>, MlError> {
    let shape = t.shape.to_vec();
    let err = |e: ort::Error| MlError::BadInput(e.to_string());
    let borrow = cfg!(target_endian = "little");
    let v: SessionInputValue<'a> = match t.dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(t.data) {
            Ok(data) if borrow => TensorRef::from_array_view((shape, data)).map_err(err)?.into_dyn().into(),
            _ => ort::value::Tensor::from_array((shape, t.to_f32())).map_err(err)?.into_dyn().into(),
        },
        DType::I64 => match bytemuck::try_cast_slice::<u8, i64>(t.data) {
            Ok(data) if borrow => TensorRef::from_array_view((shape, data)).map_err(err)?.into_dyn().into(),
            _ => ort::value::Tensor::from_array((shape, t.to_i64())).map_err(err)?.into_dyn().into(),
        },
        DType::U8 => TensorRef::from_array_view((shape, t.data)).map_err(err)?.into_dyn().into(),
        other => return Err(MlError::BadInput(format!("{other} inputs are not supported yet"))),
    };
    Ok(v)
}

fn from_value(v: &DynValue) -> Result<Tensor, MlError> {
    let err = |e: ort::Error| MlError::Run(e.to_string());
    let dims = |s: &[i64]| s.iter().map(|d| (*d).max(0) as usize).collect::<Vec<usize>>();
    match v.dtype().tensor_type() {
        Some(TensorElementType::Float32) => {
            let (s, d) = v.try_extract_tensor::<f32>().map_err(err)?;
            Ok(Tensor::from_f32(dims(s), d))
        }
        Some(TensorElementType::Int64) => {
            let (s, d) = v.try_extract_tensor::<i64>().map_err(err)?;
            Ok(Tensor::from_i64(dims(s), d))
        }
        other => Err(MlError::Run(format!("outputs of type {other:?} are not supported yet"))),
    }
}
