//! Models the cluster trains, on candle: their architectures, one
//! training step's gradients, the Adam optimizer, checkpoints, and the
//! file an inference job serves.
//!
//! Everything here is single-process and deterministic. The distributed
//! part (who computes which shard, how gradients are averaged) lives in
//! `idunno-train`; it only ever moves the flat `f32` vectors this module
//! produces and consumes. A net's parameters, its gradients and the
//! optimizer's moments are all such vectors, in the order of
//! [`Net::layout`].
//!
//! Files are safetensors with string metadata:
//! - a **model** (`format = idunno-model`): the parameters, named by
//!   layer, plus the architecture, sample shape, class count and the
//!   element type the net was trained on (integer pixels are scaled by
//!   1/255 inside the net, so training and serving feed the same raw
//!   values);
//! - a **checkpoint** (`format = idunno-checkpoint`): the same, plus the
//!   optimizer's moments (`adam.m`, `adam.v`), its step count and the
//!   training step reached.

use std::collections::HashMap;

use candle_core::{D, Device, Tensor as CTensor, Var};

use crate::DType;
use crate::limits;

mod data;
mod files;

use data::Rng;
pub use data::{DataSet, epoch_order, epoch_order_blocked, shard};
pub use files::{Checkpoint, ServedModel, is_model_file};
use files::{read_file, write_file};

/// The architectures `idunno train --arch` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Flatten, 128 hidden units with ReLU, then the classes.
    Mlp,
    /// Two 5×5 convolutions (8 and 16 channels, ReLU, 2×2 max pool each),
    /// 128 hidden units, then the classes.
    Cnn,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch, String> {
        match s {
            "mlp" => Ok(Arch::Mlp),
            "cnn" => Ok(Arch::Cnn),
            other => Err(format!("unknown architecture {other:?}: expected mlp or cnn")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
        }
    }
}

const HIDDEN: usize = 128;

/// Parameters a net may have: each is held several times over while
/// training (weights, gradients, Adam's two moments, the all-reduce).
pub const MAX_PARAMS: usize = 50_000_000;
const C1: usize = 8;
const C2: usize = 16;
const K: usize = 5;

/// What a net is, apart from its weights: enough to rebuild it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub arch: Arch,
    /// One sample's shape: `[h, w]` or `[1, h, w]` for the CNN, anything
    /// for the MLP (it is flattened).
    pub sample: Vec<usize>,
    pub classes: usize,
    /// The element type of the training inputs: integer inputs are scaled
    /// by 1/255 inside the net.
    pub input: DType,
}

impl Shape {
    /// Check that the architecture can take samples of this shape.
    pub fn new(arch: Arch, sample: &[usize], classes: usize, input: DType) -> Result<Shape, String> {
        // The shape may come from a file's metadata: checked before any
        // size derived from it is used, let alone allocated.
        let n = crate::limits::elements(sample).unwrap_or(usize::MAX);
        if sample.is_empty() || n == 0 || sample.len() > limits::MAX_RANK {
            return Err(format!("samples of shape {sample:?} cannot be trained on"));
        }
        if n > limits::MAX_SAMPLE_ELEMENTS {
            return Err(format!(
                "samples of shape {sample:?} have {n} elements; at most {} are supported",
                limits::MAX_SAMPLE_ELEMENTS
            ));
        }
        if classes < 2 {
            return Err(format!("the labels name {classes} class(es); at least 2 are needed"));
        }
        if classes > limits::MAX_CLASSES {
            return Err(format!("{classes} classes; at most {} are supported", limits::MAX_CLASSES));
        }
        if arch == Arch::Cnn {
            let (h, w) = match sample {
                [h, w] | [1, h, w] => (*h, *w),
                _ => return Err(format!("the cnn takes images [h, w] or [1, h, w]; samples have shape {sample:?}")),
            };
            if h < 4 || w < 4 {
                return Err(format!("the cnn needs images of at least 4×4, not {h}×{w}"));
            }
        }
        let shape = Shape { arch, sample: sample.to_vec(), classes, input };
        // Cannot overflow: samples and classes are bounded above.
        if shape.size() > MAX_PARAMS {
            return Err(format!(
                "the {} over samples of shape {sample:?} with {classes} classes would have {} parameters; at most {MAX_PARAMS} are supported",
                arch.name(),
                shape.size()
            ));
        }
        Ok(shape)
    }

    fn hw(&self) -> (usize, usize) {
        let s = &self.sample;
        (s[s.len() - 2], s[s.len() - 1])
    }

    fn scale(&self) -> f64 {
        if matches!(self.input, DType::F32 | DType::F64) { 1.0 } else { 1.0 / 255.0 }
    }

    /// The parameters in order: name, shape, fan-in (for initialisation).
    pub fn layout(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let inputs: usize = self.sample.iter().product();
        let c = self.classes;
        match self.arch {
            Arch::Mlp => vec![
                ("fc1.weight", vec![HIDDEN, inputs], inputs),
                ("fc1.bias", vec![HIDDEN], inputs),
                ("fc2.weight", vec![c, HIDDEN], HIDDEN),
                ("fc2.bias", vec![c], HIDDEN),
            ],
            Arch::Cnn => {
                let (h, w) = self.hw();
                let flat = C2 * (h / 2 / 2) * (w / 2 / 2);
                vec![
                    ("conv1.weight", vec![C1, 1, K, K], K * K),
                    ("conv1.bias", vec![C1], K * K),
                    ("conv2.weight", vec![C2, C1, K, K], C1 * K * K),
                    ("conv2.bias", vec![C2], C1 * K * K),
                    ("fc1.weight", vec![HIDDEN, flat], flat),
                    ("fc1.bias", vec![HIDDEN], flat),
                    ("fc2.weight", vec![c, HIDDEN], HIDDEN),
                    ("fc2.bias", vec![c], HIDDEN),
                ]
            }
        }
    }

    /// How many parameters the net has.
    pub fn size(&self) -> usize {
        self.layout().iter().map(|(_, s, _)| s.iter().product::<usize>()).sum()
    }

    fn metadata(&self) -> HashMap<String, String> {
        let sample: Vec<String> = self.sample.iter().map(|d| d.to_string()).collect();
        HashMap::from([
            ("arch".to_string(), self.arch.name().to_string()),
            ("sample_shape".to_string(), sample.join(",")),
            ("classes".to_string(), self.classes.to_string()),
            ("input_dtype".to_string(), self.input.to_string()),
        ])
    }

    fn from_metadata(m: &HashMap<String, String>) -> Result<Shape, String> {
        let get = |k: &str| m.get(k).ok_or_else(|| format!("its metadata has no {k}"));
        let arch = Arch::parse(get("arch")?)?;
        // One axis more than allowed is enough for Shape::new to refuse.
        let sample = get("sample_shape")?
            .split(',')
            .take(limits::MAX_RANK + 1)
            .map(|d| d.parse::<usize>().map_err(|_| format!("its metadata's sample_shape has a bad axis {d:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let classes = get("classes")?
            .parse::<usize>()
            .map_err(|_| format!("its metadata's classes is not a count: {:?}", m.get("classes")))?;
        let dtype = get("input_dtype")?;
        let input = [DType::U8, DType::I8, DType::I16, DType::I32, DType::I64, DType::F32, DType::F64]
            .into_iter()
            .find(|d| d.to_string() == *dtype)
            .ok_or_else(|| format!("its metadata's input_dtype {dtype:?} is not an element type"))?;
        Shape::new(arch, &sample, classes, input).map_err(|e| format!("its metadata does not describe a net: {e}"))
    }
}

fn err(e: candle_core::Error) -> String {
    e.to_string()
}

/// A net on candle's CPU device: its parameters as `Var`s (autograd
/// leaves), in layout order.
pub struct Net {
    pub shape: Shape,
    vars: Vec<Var>,
}

/// What one shard of one batch gave: the gradient of the *batch's* mean
/// loss restricted to this shard (so the sum over shards is the batch's
/// gradient), and the shard's loss sum and correct predictions.
pub struct ShardGrads {
    pub grads: Vec<f32>,
    pub loss_sum: f64,
    pub correct: u64,
    pub count: u64,
}

impl Net {
    /// A fresh net, initialised like PyTorch's defaults (uniform in
    /// ±1/√fan-in) from `seed`.
    pub fn init(shape: Shape, seed: u64) -> Result<Net, String> {
        let mut rng = Rng(seed);
        let mut flat = Vec::with_capacity(shape.size());
        for (_, dims, fan_in) in shape.layout() {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = dims.iter().product();
            flat.extend((0..n).map(|_| rng.next() * bound));
        }
        Net::from_flat(shape, &flat)
    }

    pub fn from_flat(shape: Shape, flat: &[f32]) -> Result<Net, String> {
        if flat.len() != shape.size() {
            return Err(format!("{} parameters given, the {} has {}", flat.len(), shape.arch.name(), shape.size()));
        }
        let mut vars = Vec::new();
        let mut at = 0;
        for (_, dims, _) in shape.layout() {
            let n: usize = dims.iter().product();
            let t = CTensor::from_slice(&flat[at..at + n], dims.as_slice(), &Device::Cpu).map_err(err)?;
            vars.push(Var::from_tensor(&t).map_err(err)?);
            at += n;
        }
        Ok(Net { shape, vars })
    }

    /// The parameters, flat, in layout order.
    pub fn params(&self) -> Result<Vec<f32>, String> {
        let mut out = Vec::with_capacity(self.shape.size());
        for v in &self.vars {
            out.extend(v.as_tensor().flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?);
        }
        Ok(out)
    }

    pub fn set_params(&self, flat: &[f32]) -> Result<(), String> {
        if flat.len() != self.shape.size() {
            return Err(format!("{} parameters given, the net has {}", flat.len(), self.shape.size()));
        }
        let mut at = 0;
        for v in &self.vars {
            let n = v.elem_count();
            let t = CTensor::from_slice(&flat[at..at + n], v.shape(), &Device::Cpu).map_err(err)?;
            v.set(&t).map_err(err)?;
            at += n;
        }
        Ok(())
    }

    /// The logits for a batch of raw samples `[n, …sample]` (f32 values as
    /// they are in the data set: pixels 0–255 for integer data).
    fn forward(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        let n = x.dim(0)?;
        let x = (x * self.shape.scale())?;
        let v = |i: usize| self.vars[i].as_tensor();
        let linear =
            |x: &CTensor, w: usize| -> candle_core::Result<CTensor> { x.matmul(&v(w).t()?)?.broadcast_add(v(w + 1)) };
        match self.shape.arch {
            Arch::Mlp => {
                let x = x.reshape((n, ()))?;
                let h = linear(&x, 0)?.relu()?;
                linear(&h, 2)
            }
            Arch::Cnn => {
                let (h, w) = self.shape.hw();
                let x = x.reshape((n, 1, h, w))?;
                let conv = |x: &CTensor, k: usize| -> candle_core::Result<CTensor> {
                    let b = v(k + 1).reshape((1, (), 1, 1))?;
                    x.conv2d(v(k), K / 2, 1, 1, 1)?.broadcast_add(&b)?.relu()?.max_pool2d(2)
                };
                let x = conv(&conv(&x, 0)?, 2)?.flatten_from(1)?;
                let h = linear(&x, 4)?.relu()?;
                linear(&h, 6)
            }
        }
    }

    /// Gradients for one shard of a batch of `batch` samples in all.
    pub fn shard_grads(&self, x: &[f32], y: &[u32], batch: usize) -> Result<ShardGrads, String> {
        let n = y.len();
        let mut dims = vec![n];
        dims.extend(&self.shape.sample);
        let xt = CTensor::from_slice(x, dims.as_slice(), &Device::Cpu).map_err(err)?;
        let yt = CTensor::from_slice(y, n, &Device::Cpu).map_err(err)?;
        let logits = self.forward(&xt).map_err(err)?;
        let mean = candle_nn::loss::cross_entropy(&logits, &yt).map_err(err)?;
        let loss = (mean * (n as f64 / batch.max(1) as f64)).map_err(err)?;
        let store = loss.backward().map_err(err)?;
        let mut grads = Vec::with_capacity(self.shape.size());
        for v in &self.vars {
            match store.get(v.as_tensor()) {
                Some(g) => grads.extend(g.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?),
                None => grads.extend(std::iter::repeat_n(0.0, v.elem_count())),
            }
        }
        let loss_sum = f64::from(loss.to_scalar::<f32>().map_err(err)?) * batch as f64;
        let correct = correct(&logits, y)?;
        Ok(ShardGrads { grads, loss_sum, correct, count: n as u64 })
    }

    /// Loss sum and correct predictions over samples `range` of `data`
    /// (no gradients).
    pub fn evaluate(&self, data: &DataSet, range: std::ops::Range<usize>) -> Result<(f64, u64), String> {
        let (mut loss, mut right) = (0.0, 0);
        let end = range.end.min(data.len());
        for start in range.step_by(1000) {
            let stop = (start + 1000).min(end);
            if stop <= start {
                break;
            }
            let idx: Vec<u32> = (start as u32..stop as u32).collect();
            let (x, y) = data.gather(&idx)?;
            let (l, r) = self.evaluate_batch(&x, &y)?;
            loss += l;
            right += r;
        }
        Ok((loss, right))
    }

    /// Loss sum and correct predictions of samples `x` labelled `y`.
    pub fn evaluate_batch(&self, x: &[f32], y: &[u32]) -> Result<(f64, u64), String> {
        if y.is_empty() {
            return Ok((0.0, 0));
        }
        let mut dims = vec![y.len()];
        dims.extend(&self.shape.sample);
        let xt = CTensor::from_slice(x, dims.as_slice(), &Device::Cpu).map_err(err)?;
        let yt = CTensor::from_slice(y, y.len(), &Device::Cpu).map_err(err)?;
        let logits = self.forward(&xt).map_err(err)?.detach();
        let l = candle_nn::loss::cross_entropy(&logits, &yt).map_err(err)?.to_scalar::<f32>().map_err(err)?;
        Ok((f64::from(l) * y.len() as f64, correct(&logits, y)?))
    }

    /// Logits for raw samples, `[n, classes]` row-major.
    pub fn predict(&self, x: &[f32], n: usize) -> Result<Vec<f32>, String> {
        let mut dims = vec![n];
        dims.extend(&self.shape.sample);
        let xt = CTensor::from_slice(x, dims.as_slice(), &Device::Cpu).map_err(err)?;
        let logits = self.forward(&xt).map_err(err)?.detach();
        logits.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)
    }

    /// The net a model file holds.
    pub fn from_model_file(bytes: &[u8]) -> Result<Net, String> {
        let f = read_file(bytes, "idunno-model")?;
        Net::from_flat(f.shape, &f.params)
    }

    /// The model file an inference job serves.
    pub fn to_model_file(&self) -> Result<Vec<u8>, String> {
        write_file(&self.shape, "idunno-model", &self.params()?, None)
    }
}

fn correct(logits: &CTensor, y: &[u32]) -> Result<u64, String> {
    let pred = logits.argmax(D::Minus1).map_err(err)?.to_vec1::<u32>().map_err(err)?;
    Ok(pred.iter().zip(y).filter(|(p, y)| p == y).count() as u64)
}

/// Adam (Kingma & Ba) over flat vectors, so its state can be saved in a
/// checkpoint and restored bit for bit (candle-nn's optimizers keep
/// theirs private).
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub lr: f32,
    pub t: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    pub fn new(lr: f32, size: usize) -> Adam {
        Adam { lr, t: 0, m: vec![0.0; size], v: vec![0.0; size] }
    }

    /// One update of `params` with the batch gradient `grads`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        self.t += 1;
        let t = self.t.min(i32::MAX as u64) as i32;
        let c1 = 1.0 - Self::B1.powi(t);
        let c2 = 1.0 - Self::B2.powi(t);
        for i in 0..params.len().min(grads.len()) {
            let g = grads[i];
            self.m[i] = Self::B1 * self.m[i] + (1.0 - Self::B1) * g;
            self.v[i] = Self::B2 * self.v[i] + (1.0 - Self::B2) * g * g;
            let m = self.m[i] / c1;
            let v = self.v[i] / c2;
            params[i] -= self.lr * m / (v.sqrt() + Self::EPS);
        }
    }
}

/// One model replica's training loop state: the net, its optimizer and
/// the step reached. A single process trains with `world = 1`; a
/// data-parallel worker computes its shard and applies the sum of all
/// shards' gradients, so every replica stays identical.
pub struct Trainer {
    pub net: Net,
    pub adam: Adam,
    params: Vec<f32>,
    pub data: std::sync::Arc<DataSet>,
    pub batch: usize,
    pub seed: u64,
    /// Steps done (the next step to run).
    pub step: u64,
    order: Option<(u64, Vec<u32>)>,
    /// Samples per block of a set read by range (0: the set is held, and
    /// every epoch is a full shuffle): see [`epoch_order_blocked`].
    block: usize,
}

/// Blocks whose samples are shuffled together, for a set read by range.
pub const ORDER_WINDOW: usize = 16;

impl Trainer {
    pub fn new(
        shape: Shape,
        data: std::sync::Arc<DataSet>,
        batch: usize,
        lr: f32,
        seed: u64,
    ) -> Result<Trainer, String> {
        let net = Net::init(shape, seed)?;
        let params = net.params()?;
        let adam = Adam::new(lr, params.len());
        Ok(Trainer { net, adam, params, data, batch: batch.max(1), seed, step: 0, order: None, block: 0 })
    }

    /// Go on from a checkpoint (its optimizer state and step included).
    pub fn resume(c: Checkpoint, data: std::sync::Arc<DataSet>, batch: usize, seed: u64) -> Result<Trainer, String> {
        let net = Net::from_flat(c.shape, &c.params)?;
        let (step, batch) = (c.step, batch.max(1));
        Ok(Trainer { net, adam: c.adam, params: c.params, data, batch, seed, step, order: None, block: 0 })
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.data.len().div_ceil(self.batch) as u64
    }

    /// Order the samples by blocks of `block` (a set read by range).
    pub fn order_by_blocks(&mut self, block: usize) {
        self.block = block;
        self.order = None;
    }

    /// The samples of step `self.step`'s batch that rank `rank` of `world`
    /// computes, and the batch's size.
    pub fn shard_of_step(&mut self, rank: usize, world: usize) -> (Vec<u32>, usize) {
        let spe = self.steps_per_epoch().max(1);
        let epoch = self.step / spe;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let n = self.data.len();
            let order = match self.block {
                0 => epoch_order(n, self.seed, epoch),
                b => epoch_order_blocked(n, b, ORDER_WINDOW, self.seed, epoch),
            };
            self.order = Some((epoch, order));
        }
        let order = self.order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or(&[]);
        let at = ((self.step % spe) as usize) * self.batch;
        let batch = &order[at.min(order.len())..(at + self.batch).min(order.len())];
        (batch[shard(batch.len(), rank, world)].to_vec(), batch.len())
    }

    /// This rank's gradients for the current step.
    pub fn shard_grads(&mut self, rank: usize, world: usize) -> Result<ShardGrads, String> {
        let (idx, batch) = self.shard_of_step(rank, world);
        let (x, y) = self.data.gather(&idx)?;
        self.shard_grads_on(&x, &y, batch)
    }

    /// The gradients of samples `x` labelled `y`, a shard of a batch of
    /// `batch` (gathered by the caller: a set read by range).
    pub fn shard_grads_on(&self, x: &[f32], y: &[u32], batch: usize) -> Result<ShardGrads, String> {
        if y.is_empty() {
            return Ok(ShardGrads { grads: vec![0.0; self.params.len()], loss_sum: 0.0, correct: 0, count: 0 });
        }
        self.net.shard_grads(x, y, batch)
    }

    /// Apply the batch gradient (the sum over all shards) and move on.
    pub fn apply(&mut self, grads: &[f32]) -> Result<(), String> {
        if grads.len() != self.params.len() {
            return Err(format!("{} gradients for {} parameters", grads.len(), self.params.len()));
        }
        self.adam.step(&mut self.params, grads);
        self.net.set_params(&self.params)?;
        self.step += 1;
        Ok(())
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            shape: self.net.shape.clone(),
            step: self.step,
            params: self.params.clone(),
            adam: self.adam.clone(),
            notes: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn toy_shape(arch: Arch) -> Shape {
        Shape::new(arch, &[8, 8], 3, DType::U8).unwrap()
    }

    #[test]
    fn shards_cover_the_batch_once() {
        for batch in [1, 7, 64, 65] {
            for world in 1..5 {
                let mut seen = vec![0; batch];
                for r in 0..world {
                    for i in shard(batch, r, world) {
                        seen[i] += 1;
                    }
                }
                assert!(seen.iter().all(|c| *c == 1), "batch {batch} world {world}: {seen:?}");
            }
        }
    }

    #[test]
    fn epoch_orders_are_permutations_and_differ_by_epoch() {
        let a = epoch_order(1000, 7, 0);
        let b = epoch_order(1000, 7, 1);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(1000, 7, 0));
    }

    #[test]
    fn blocked_orders_are_permutations_that_keep_to_few_blocks() {
        let (n, block) = (10_007, 100);
        let a = epoch_order_blocked(n, block, 4, 7, 0);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..n as u32).collect::<Vec<u32>>());
        assert_ne!(a, epoch_order_blocked(n, block, 4, 7, 1));
        assert_eq!(a, epoch_order_blocked(n, block, 4, 7, 0));
        // Any 400 consecutive samples of the order come from at most 8
        // blocks (two windows of 4).
        for w in a.chunks(400) {
            let mut blocks: Vec<u32> = w.iter().map(|i| i / block as u32).collect();
            blocks.sort_unstable();
            blocks.dedup();
            assert!(blocks.len() <= 8, "{} blocks", blocks.len());
        }
    }

    /// Gradients of shards sum to the gradient of the whole batch: what
    /// makes data-parallel training the same as training in one process.
    #[test]
    fn shard_gradients_sum_to_the_batch_gradient() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let net = Net::init(toy_shape(arch), 1).unwrap();
            let mut rng = Rng(5);
            let x: Vec<f32> = (0..10 * 64).map(|_| (rng.next() + 1.0) * 127.0).collect();
            let y: Vec<u32> = (0..10).map(|i| i % 3).collect();
            let whole = net.shard_grads(&x, &y, 10).unwrap();
            let mut sum = vec![0.0f32; whole.grads.len()];
            let mut loss = 0.0;
            for r in 0..3 {
                let s = shard(10, r, 3);
                let g = net.shard_grads(&x[s.start * 64..s.end * 64], &y[s.clone()], 10).unwrap();
                sum.iter_mut().zip(&g.grads).for_each(|(a, b)| *a += b);
                loss += g.loss_sum;
            }
            let worst = sum.iter().zip(&whole.grads).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{arch:?}: shard gradients differ by {worst}");
            assert!((loss - whole.loss_sum).abs() < 1e-3, "{loss} vs {}", whole.loss_sum);
        }
    }

    #[test]
    fn checkpoints_and_models_round_trip() {
        let shape = toy_shape(Arch::Cnn);
        let net = Net::init(shape.clone(), 3).unwrap();
        let mut adam = Adam::new(0.01, shape.size());
        let mut params = net.params().unwrap();
        adam.step(&mut params, &vec![0.5; shape.size()]);
        let notes = [("train.correct".to_string(), "7".to_string())].into_iter().collect();
        let c = Checkpoint { shape: shape.clone(), step: 42, params: params.clone(), adam, notes };
        assert_eq!(Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);

        net.set_params(&params).unwrap();
        let file = net.to_model_file().unwrap();
        assert!(is_model_file(&file));
        let mut served = ServedModel::load(&file, 1).unwrap();
        let x = Tensor { dtype: DType::U8, shape: vec![2, 8, 8], data: (0..128).map(|i| i as u8).collect() };
        let out = served.run(&[crate::onnx::fit(&served.inputs()[0], x.clone()).unwrap()]).unwrap();
        assert_eq!(out[0].to_f32(), net.predict(&x.to_f32(), 2).unwrap());
        // A checkpoint is not a servable model, nor the other way round.
        assert!(ServedModel::load(&c.to_bytes().unwrap(), 1).is_err());
        assert!(Checkpoint::from_bytes(&file).is_err());
    }

    #[test]
    fn bad_shapes_are_refused_with_reasons() {
        assert!(Shape::new(Arch::Cnn, &[784], 10, DType::U8).unwrap_err().contains("[h, w]"));
        assert!(Shape::new(Arch::Mlp, &[4], 1, DType::U8).unwrap_err().contains("at least 2"));
        assert!(Arch::parse("resnet").unwrap_err().contains("mlp or cnn"));
    }
}
