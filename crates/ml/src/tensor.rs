//! A dense, row-major array: element type, shape, little-endian bytes.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U8,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        };
        f.write_str(s)
    }
}

/// Row-major; the first axis is the sample axis. Bytes are little-endian
/// whatever the source format was.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// The number of elements (saturating: the decoders never make a
    /// tensor whose count overflows).
    pub fn len(&self) -> usize {
        crate::limits::elements(&self.shape).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of samples (length of the first axis; 1 for a scalar).
    pub fn samples(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Shape of one sample (the shape without its first axis).
    pub fn sample_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Samples `start .. start + count` (clamped to the end) as a tensor.
    ///
    /// Clamped to the rows the data holds as well: the decoders only make
    /// tensors whose data fits their shape, but the fields are public, and
    /// a tensor built inconsistently by hand must not panic a worker.
    pub fn rows(&self, start: usize, count: usize) -> Tensor {
        let row_bytes = crate::limits::elements(self.sample_shape())
            .and_then(|n| n.checked_mul(self.dtype.size()))
            .unwrap_or(usize::MAX);
        let held = self.data.len().checked_div(row_bytes).unwrap_or(self.samples());
        let n = self.samples().min(held);
        let start = start.min(n);
        let end = start.saturating_add(count).min(n);
        let mut shape = self.shape.clone();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] = end - start;
        // In range: end <= held, so end * row_bytes <= data.len().
        let data = self.data.get(start * row_bytes..end * row_bytes).unwrap_or_default().to_vec();
        Tensor { dtype: self.dtype, shape, data }
    }

    /// The samples with their axes reordered: axis `i` of each output
    /// sample is axis `perm[i]` of the input's (numpy:
    /// `x.transpose(0, 1 + perm[0], 1 + perm[1], …)`). `perm` must be a
    /// permutation of the sample axes; the tensor must hold what its shape
    /// says.
    pub fn permute_samples(&self, perm: &[usize]) -> Result<Tensor, String> {
        let sample = self.sample_shape();
        let mut seen = vec![false; sample.len()];
        let valid = perm.len() == sample.len()
            && perm.iter().all(|p| *p < seen.len() && !std::mem::replace(&mut seen[*p], true));
        if !valid {
            return Err(format!("{perm:?} is not an order of the {} axes of samples {sample:?}", sample.len()));
        }
        let elem = self.dtype.size();
        let per = crate::limits::elements(sample).unwrap_or(usize::MAX);
        if crate::limits::elements(&self.shape).and_then(|n| n.checked_mul(elem)) != Some(self.data.len()) {
            return Err(format!("a tensor of shape {:?} does not hold {} bytes", self.shape, self.data.len()));
        }
        // Strides of the input sample, in elements, then read in output order.
        let mut strides = vec![1usize; sample.len()];
        for i in (0..sample.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * sample[i + 1];
        }
        let out_dims: Vec<usize> = perm.iter().map(|p| sample[*p]).collect();
        let out_strides: Vec<usize> = perm.iter().map(|p| strides[*p]).collect();
        let mut data = Vec::with_capacity(self.data.len());
        let mut index = vec![0usize; out_dims.len()];
        for s in 0..self.samples() {
            let base = s * per;
            for _ in 0..per {
                // In range: the shape was checked to hold data.len() bytes,
                // and every index stays below its axis.
                let at = base + index.iter().zip(&out_strides).map(|(i, st)| i * st).sum::<usize>();
                data.extend_from_slice(&self.data[at * elem..(at + 1) * elem]);
                // The next index in row-major order of the output.
                for axis in (0..index.len()).rev() {
                    index[axis] += 1;
                    if index[axis] < out_dims[axis] {
                        break;
                    }
                    index[axis] = 0;
                }
            }
        }
        let mut shape = vec![self.samples()];
        shape.extend(out_dims);
        Ok(Tensor { dtype: self.dtype, shape, data })
    }

    /// The tensor, borrowed.
    pub fn view(&self) -> TensorView<'_> {
        TensorView { dtype: self.dtype, shape: &self.shape, data: &self.data }
    }

    /// Every element as f32 (integers are converted, f64 rounded).
    pub fn to_f32(&self) -> Vec<f32> {
        self.view().to_f32()
    }

    /// Every element as i64 (for labels and token ids; floats truncate).
    pub fn to_i64(&self) -> Vec<i64> {
        self.view().to_i64()
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor { dtype: DType::F32, shape, data: le_bytes(values, |v| v.to_le_bytes()) }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Tensor {
        Tensor { dtype: DType::I64, shape, data: le_bytes(values, |v| v.to_le_bytes()) }
    }
}

/// A tensor whose shape and bytes are borrowed (from a request's body,
/// say): what a model reads its inputs from, with no copy to make one.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn to_tensor(&self) -> Tensor {
        Tensor { dtype: self.dtype, shape: self.shape.to_vec(), data: self.data.to_vec() }
    }

    /// Every element as f32 (integers are converted, f64 rounded).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = self.data;
        match self.dtype {
            DType::U8 => d.iter().map(|b| f32::from(*b)).collect(),
            DType::I8 => d.iter().map(|b| f32::from(*b as i8)).collect(),
            DType::I16 => d.chunks_exact(2).map(|c| f32::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            DType::I64 => {
                d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            DType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F64 => {
                d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
        }
    }

    /// Every element as i64 (for labels and token ids; floats truncate).
    pub fn to_i64(&self) -> Vec<i64> {
        match self.dtype {
            DType::I64 => {
                self.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
            }
            _ => self.to_f32().into_iter().map(|x| x as i64).collect(),
        }
    }
}

/// Values as their little-endian bytes: one copy of memory on a
/// little-endian host (a model's outputs are turned into a tensor so).
fn le_bytes<T: bytemuck::Pod, const N: usize>(values: &[T], le: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(le).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_permuted_like_numpy_transpose() {
        // Two samples of [2, 3, 2] (h, w, c), values 0..24.
        let x = Tensor::from_f32(vec![2, 2, 3, 2], &(0..24).map(|v| v as f32).collect::<Vec<_>>());
        let y = x.permute_samples(&[2, 0, 1]).unwrap();
        assert_eq!(y.shape, vec![2, 2, 2, 3]);
        // numpy: np.arange(24).reshape(2, 2, 3, 2).transpose(0, 3, 1, 2).ravel()
        let want = [
            0., 2., 4., 6., 8., 10., 1., 3., 5., 7., 9., 11., 12., 14., 16., 18., 20., 22., 13., 15., 17., 19., 21.,
            23.,
        ];
        assert_eq!(y.to_f32(), want);
        // The identity changes nothing; the inverse order undoes it.
        assert_eq!(x.permute_samples(&[0, 1, 2]).unwrap(), x);
        assert_eq!(y.permute_samples(&[1, 2, 0]).unwrap(), x);
        for bad in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
            assert!(x.permute_samples(bad).unwrap_err().contains("is not an order"), "{bad:?}");
        }
        let short = Tensor { dtype: DType::U8, shape: vec![2, 3], data: vec![0; 5] };
        assert!(short.permute_samples(&[0]).is_err());
    }
}
