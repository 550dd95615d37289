//! NumPy's `.npy` format (versions 1–3): a magic string, a Python-dict
//! header naming dtype, memory order and shape, then the raw elements.
//! C order only; either byte order (big-endian data is swapped).

use crate::layout::{Layout, check_length};
use crate::limits::MAX_NPY_HEADER;
use crate::{DType, FormatError, Tensor};

pub const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(why: impl Into<String>) -> FormatError {
    FormatError::Malformed { expected: "an .npy file", why: why.into() }
}

/// The value after `'key':` in the header dict, up to the next top-level
/// comma or the closing brace.
fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, FormatError> {
    let pat = format!("'{key}':");
    let at = header.find(&pat).ok_or_else(|| bad(format!("the header has no '{key}'")))?;
    let rest = header[at + pat.len()..].trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim()),
            _ => {}
        }
    }
    Err(bad(format!("the header's '{key}' is not terminated")))
}

fn dtype(descr: &str) -> Result<(DType, bool), FormatError> {
    let d = descr.trim_matches(|c| c == '\'' || c == '"');
    // By characters, not bytes: the descr is whatever the file says.
    let mut chars = d.chars();
    let order = chars.next();
    let code = chars.as_str();
    let big = match order {
        Some('<' | '|' | '=') => false,
        Some('>') => true,
        _ => return Err(FormatError::Unsupported { what: "npy dtype", value: d.to_string() }),
    };
    let t = match code {
        "u1" => DType::U8,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "f4" => DType::F32,
        "f8" => DType::F64,
        _ => return Err(FormatError::Unsupported { what: "npy dtype", value: d.to_string() }),
    };
    Ok((t, big && t.size() > 1))
}

fn shape(s: &str) -> Result<Vec<usize>, FormatError> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("shape {s} is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<usize>().map_err(|_| bad(format!("shape {s} has a non-integer {p:?}"))))
        .collect()
}

/// The layout of an `.npy` file of `file_size` bytes from its first
/// bytes ([`crate::layout::HEADER_BYTES`] are always enough).
pub fn layout(bytes: &[u8], file_size: u64) -> Result<Layout, FormatError> {
    if !bytes.starts_with(MAGIC) {
        return Err(bad("it does not start with \\x93NUMPY"));
    }
    let major = *bytes.get(6).ok_or_else(|| bad("it ends inside the magic string"))?;
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(FormatError::Unsupported { what: "npy version", value: v.to_string() }),
    };
    let len_field = bytes.get(8..8 + len_bytes).ok_or_else(|| bad("it ends inside the header length"))?;
    let header_len = len_field.iter().rev().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    if header_len > MAX_NPY_HEADER {
        return Err(bad(format!("its header length is {header_len} bytes; at most {MAX_NPY_HEADER} are supported")));
    }
    let header_bytes = bytes.get(start..start + header_len).ok_or_else(|| bad("it ends inside the header"))?;
    let header = std::str::from_utf8(header_bytes).map_err(|_| bad("the header is not text"))?;
    let (dtype, big_endian) = dtype(field(header, "descr")?)?;
    match field(header, "fortran_order")? {
        "False" => {}
        "True" => return Err(FormatError::Unsupported { what: "npy memory order", value: "Fortran".into() }),
        other => return Err(bad(format!("fortran_order is {other}"))),
    }
    let shape = shape(field(header, "shape")?)?;
    let data_start = (start + header_len) as u64;
    // Checked before anything is allocated: the declared size must be
    // the size present.
    check_length("npy", "an .npy file", &shape, dtype, data_start, file_size)?;
    Ok(Layout { dtype, shape, data_start, big_endian })
}

pub fn read(bytes: &[u8]) -> Result<Tensor, FormatError> {
    layout(bytes, bytes.len() as u64)?.decode_all(bytes)
}

/// Encode as `.npy` version 1.0 (little-endian, C order).
pub fn write(t: &Tensor) -> Vec<u8> {
    let descr = match t.dtype {
        DType::U8 => "|u1",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
    };
    let mut out = header(descr, &t.shape);
    out.extend_from_slice(&t.data);
    out
}

/// The start of an `.npy` version 1.0 file of C-order elements `descr`
/// (`<f4`, `>i8`, …) and `shape`: what precedes the elements, for a
/// writer that streams them.
pub fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces and a newline so that data starts on a 64-byte line.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}
