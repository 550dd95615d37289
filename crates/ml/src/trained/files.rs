//! The files a trained net lives in: a checkpoint (everything training
//! needs to go on) and a model (what an inference job serves), both
//! safetensors with string metadata (see the module above).

use std::collections::HashMap;

use super::{Adam, Net, Shape};
use crate::onnx::{MlError, Signature};
use crate::{DType, Tensor};

/// Everything training needs to go on exactly where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub shape: Shape,
    /// Training steps done (the next step to run).
    pub step: u64,
    pub params: Vec<f32>,
    pub adam: Adam,
    /// What the trainer wants back on resume besides the net (the running
    /// epoch's score, say), kept as `note.<key>` metadata.
    pub notes: std::collections::BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut extra = vec![
            ("step".to_string(), self.step.to_string()),
            ("adam.t".to_string(), self.adam.t.to_string()),
            ("adam.lr".to_string(), self.adam.lr.to_string()),
        ];
        extra.extend(self.notes.iter().map(|(k, v)| (format!("note.{k}"), v.clone())));
        write_file(&self.shape, "idunno-checkpoint", &self.params, Some((&self.adam, &extra)))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, String> {
        let f = read_file(bytes, "idunno-checkpoint")?;
        let num = |k: &str| -> Result<String, String> {
            f.meta.get(k).cloned().ok_or_else(|| format!("not a checkpoint: no {k} in its metadata"))
        };
        let step = num("step")?.parse::<u64>().map_err(|e| e.to_string())?;
        let t = num("adam.t")?.parse::<u64>().map_err(|e| e.to_string())?;
        let lr = num("adam.lr")?.parse::<f32>().map_err(|e| e.to_string())?;
        let (m, v) = f.moments.ok_or("not a checkpoint: no optimizer state")?;
        let notes =
            f.meta.iter().filter_map(|(k, v)| Some((k.strip_prefix("note.")?.to_string(), v.clone()))).collect();
        Ok(Checkpoint { shape: f.shape, step, params: f.params, adam: Adam { lr, t, m, v }, notes })
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn write_file(
    shape: &Shape,
    format: &str,
    params: &[f32],
    adam: Option<(&Adam, &[(String, String)])>,
) -> Result<Vec<u8>, String> {
    let mut meta = shape.metadata();
    meta.insert("format".into(), format.into());
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut at = 0;
    for (name, dims, _) in shape.layout() {
        let n: usize = dims.iter().product();
        owned.push((name.to_string(), dims, f32_bytes(&params[at..at + n])));
        at += n;
    }
    if let Some((adam, extra)) = adam {
        owned.push(("adam.m".into(), vec![adam.m.len()], f32_bytes(&adam.m)));
        owned.push(("adam.v".into(), vec![adam.v.len()], f32_bytes(&adam.v)));
        for (k, v) in extra {
            meta.insert(k.clone(), v.clone());
        }
    }
    let mut views = Vec::new();
    for (name, dims, data) in &owned {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), data)
            .map_err(|e| e.to_string())?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

pub(super) struct File {
    pub(super) shape: Shape,
    pub(super) meta: HashMap<String, String>,
    pub(super) params: Vec<f32>,
    pub(super) moments: Option<(Vec<f32>, Vec<f32>)>,
}

pub(super) fn read_file(bytes: &[u8], format: &str) -> Result<File, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(format) {
        return Err(format!("not an {format} file (its metadata says format {:?})", meta.get("format")));
    }
    let shape = Shape::from_metadata(&meta)?;
    let floats = |name: &str, dims: Option<&[usize]>| -> Result<Vec<f32>, String> {
        let t = st.tensor(name).map_err(|_| format!("it has no tensor {name}"))?;
        if t.dtype() != safetensors::Dtype::F32 || dims.is_some_and(|d| d != t.shape()) {
            return Err(format!("tensor {name} is {:?} {:?}, expected F32 {dims:?}", t.dtype(), t.shape()));
        }
        Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    // The metadata's shape is believed only as far as the file's bytes
    // back it: its parameters must be in the file before room is made.
    let size = shape.size();
    if size.saturating_mul(4) > bytes.len() {
        return Err(format!(
            "its metadata describes a {} of {size} parameters ({} bytes) but the file has {} bytes",
            shape.arch.name(),
            size.saturating_mul(4),
            bytes.len()
        ));
    }
    let mut params = Vec::with_capacity(size);
    for (name, dims, _) in shape.layout() {
        params.extend(floats(name, Some(&dims))?);
    }
    let moments = match (floats("adam.m", Some(&[params.len()])), floats("adam.v", Some(&[params.len()]))) {
        (Ok(m), Ok(v)) => Some((m, v)),
        _ => None,
    };
    Ok(File { shape, meta, params, moments })
}

/// Whether `bytes` look like a model file of this module (safetensors:
/// a little-endian header length, then a JSON object).
pub fn is_model_file(bytes: &[u8]) -> bool {
    bytes.len() > 9 && bytes[8] == b'{' && u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0xff; 8])) < 1 << 24
}

/// A trained model loaded for serving, with the same surface as an ONNX
/// model: one input (the raw samples), one output (the logits).
pub struct ServedModel {
    net: Net,
    inputs: Vec<Signature>,
    outputs: Vec<Signature>,
    pool: rayon::ThreadPool,
}

impl ServedModel {
    pub fn load(bytes: &[u8], threads: usize) -> Result<ServedModel, MlError> {
        let f = read_file(bytes, "idunno-model").map_err(MlError::BadModel)?;
        let net = Net::from_flat(f.shape.clone(), &f.params).map_err(MlError::BadModel)?;
        let mut shape = vec![-1i64];
        shape.extend(f.shape.sample.iter().map(|d| *d as i64));
        let inputs = vec![Signature { name: "x".into(), dtype: Some(DType::F32), shape }];
        let outputs =
            vec![Signature { name: "logits".into(), dtype: Some(DType::F32), shape: vec![-1, f.shape.classes as i64] }];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| MlError::Run(e.to_string()))?;
        Ok(ServedModel { net, inputs, outputs, pool })
    }

    pub fn inputs(&self) -> &[Signature] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Signature] {
        &self.outputs
    }

    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, MlError> {
        let [x] = inputs else {
            return Err(MlError::BadInput(format!("the model takes 1 input (x), {} given", inputs.len())));
        };
        let per: usize = self.net.shape.sample.iter().product();
        let n = x.samples();
        if x.sample_shape().iter().product::<usize>() != per {
            return Err(MlError::BadInput(format!(
                "input x has shape {:?}, the model expects samples of {:?}",
                x.shape, self.net.shape.sample
            )));
        }
        let values = x.to_f32();
        let logits = self.pool.install(|| self.net.predict(&values, n)).map_err(MlError::Run)?;
        Ok(vec![Tensor::from_f32(vec![n, self.net.shape.classes], &logits)])
    }
}
