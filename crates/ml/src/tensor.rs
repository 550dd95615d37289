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

    /// Every element as f32 (integers are converted, f64 rounded).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
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

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor { dtype: DType::F32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Tensor {
        Tensor { dtype: DType::I64, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}
