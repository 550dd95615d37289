//! The Open Inference Protocol's REST form (KServe v2), sans-IO: an
//! inference request's body (JSON, or JSON followed by raw tensors — the
//! binary-data extension `tritonclient` uses, whose JSON part's length is
//! the `Inference-Header-Content-Length` header) into [`InferRequest`], and
//! an [`InferResponse`] into a body the same way. Tensors travel as raw
//! little-endian bytes in row-major order from here on, whichever form
//! they came in.
//!
//! Every byte is the client's: sizes are checked against the body before
//! anything is allocated, and every refusal names what is wrong.

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The protocol's element types that idunno runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Datatype {
    pub fn parse(s: &str) -> Option<Datatype> {
        Some(match s {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::U8,
            "INT8" => Datatype::I8,
            "INT16" => Datatype::I16,
            "INT32" => Datatype::I32,
            "INT64" => Datatype::I64,
            "FP32" => Datatype::F32,
            "FP64" => Datatype::F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::U8 => "UINT8",
            Datatype::I8 => "INT8",
            Datatype::I16 => "INT16",
            Datatype::I32 => "INT32",
            Datatype::I64 => "INT64",
            Datatype::F32 => "FP32",
            Datatype::F64 => "FP64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Datatype::Bool | Datatype::U8 | Datatype::I8 => 1,
            Datatype::I16 => 2,
            Datatype::I32 | Datatype::F32 => 4,
            Datatype::I64 | Datatype::F64 => 8,
        }
    }
}

/// A tensor: raw little-endian elements, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    /// Little-endian elements; a slice of the request's body when they
    /// came as binary data (not copied).
    pub data: Bytes,
}

impl Tensor {
    /// Elements the shape holds, if that count fits.
    pub fn elements(shape: &[u64]) -> Option<u64> {
        shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
    }
}

/// An output the client asked for, and whether as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    pub name: String,
    pub binary: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Empty: every output.
    pub outputs: Vec<Requested>,
    /// Outputs not named in `outputs` come as raw bytes.
    pub binary_outputs: bool,
    /// The client's deadline for the request, if it gave one (µs).
    pub timeout_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// A request the protocol's rules refuse; the text says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn err<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// At most this many inputs or outputs in one request.
pub const MAX_TENSORS: usize = 64;
/// At most this many dimensions.
pub const MAX_RANK: usize = 16;

/// Read a REST inference request. `header_len` is the value of
/// `Inference-Header-Content-Length`, when the body carries raw tensors
/// after its JSON part.
pub fn parse_request(body: &Bytes, header_len: Option<usize>) -> Result<InferRequest, ProtocolError> {
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return err(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        ));
    }
    let (head, mut raw) = (&body[..json_len], body.slice(json_len..));
    let doc: Value =
        serde_json::from_slice(head).map_err(|e| ProtocolError(format!("the request is not JSON: {e}")))?;
    let doc = doc.as_object().ok_or_else(|| ProtocolError("the request must be a JSON object".into()))?;
    let id = match doc.get("id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return err("\"id\" must be a string"),
    };
    let params = parameters(doc.get("parameters"), "the request")?;
    let binary_outputs = match params.get("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return err("parameter binary_data_output must be true or false"),
    };
    let timeout_us = match params.get("timeout") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| ProtocolError("parameter timeout must be microseconds".into()))?),
    };
    let inputs = doc
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ProtocolError("the request has no \"inputs\" list".into()))?;
    if inputs.is_empty() || inputs.len() > MAX_TENSORS {
        return err(format!("a request has 1 to {MAX_TENSORS} inputs, not {}", inputs.len()));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        tensors.push(input_tensor(input, &mut raw)?);
    }
    if !raw.is_empty() {
        return err(format!("{} bytes of binary data after the inputs belong to none of them", raw.len()));
    }
    let mut outputs = Vec::new();
    if let Some(list) = doc.get("outputs") {
        let list = list.as_array().ok_or_else(|| ProtocolError("\"outputs\" must be a list".into()))?;
        if list.len() > MAX_TENSORS {
            return err(format!("at most {MAX_TENSORS} outputs may be asked for, not {}", list.len()));
        }
        for o in list {
            let o = o.as_object().ok_or_else(|| ProtocolError("each output must be an object".into()))?;
            let name = string(o, "name", "an output")?;
            let p = parameters(o.get("parameters"), &format!("output {name}"))?;
            let binary = match p.get("binary_data") {
                None => binary_outputs,
                Some(Value::Bool(b)) => *b,
                Some(_) => return err(format!("output {name}: binary_data must be true or false")),
            };
            if p.contains_key("shared_memory_region") {
                return err(format!("output {name}: shared memory is not supported"));
            }
            outputs.push(Requested { name, binary });
        }
    }
    Ok(InferRequest { id, inputs: tensors, outputs, binary_outputs, timeout_us })
}

fn parameters(v: Option<&Value>, of: &str) -> Result<Map<String, Value>, ProtocolError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => err(format!("the parameters of {of} must be an object")),
    }
}

fn string(o: &Map<String, Value>, key: &str, of: &str) -> Result<String, ProtocolError> {
    match o.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => err(format!("{of} has no \"{key}\"")),
    }
}

fn input_tensor(v: &Value, raw: &mut Bytes) -> Result<Tensor, ProtocolError> {
    let o = v.as_object().ok_or_else(|| ProtocolError("each input must be an object".into()))?;
    let name = string(o, "name", "an input")?;
    let dt = string(o, "datatype", &format!("input {name}"))?;
    let datatype = Datatype::parse(&dt).ok_or_else(|| {
        ProtocolError(format!("input {name}: datatype {dt} is not supported (BOOL, UINT8, INT8-INT64, FP32, FP64)"))
    })?;
    let shape = o
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| ProtocolError(format!("input {name} has no \"shape\" list")))?;
    if shape.len() > MAX_RANK {
        return err(format!("input {name}: at most {MAX_RANK} dimensions, not {}", shape.len()));
    }
    let shape: Vec<u64> = shape
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| ProtocolError(format!("input {name}: shape {shape:?} is not a shape"))))
        .collect::<Result<_, _>>()?;
    let bytes = Tensor::elements(&shape)
        .and_then(|n| n.checked_mul(datatype.size() as u64))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| ProtocolError(format!("input {name}: shape {shape:?} is too large")))?;
    let p = parameters(o.get("parameters"), &format!("input {name}"))?;
    if p.contains_key("shared_memory_region") {
        return err(format!("input {name}: shared memory is not supported"));
    }
    let data = match p.get("binary_data_size") {
        Some(size) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| ProtocolError(format!("input {name}: binary_data_size must be a byte count")))?;
            if o.contains_key("data") {
                return err(format!("input {name} has both binary data and \"data\""));
            }
            if size > raw.len() {
                return err(format!(
                    "input {name}: binary_data_size is {size} but only {} bytes of binary data are left",
                    raw.len()
                ));
            }
            raw.split_to(size)
        }
        None => {
            let data = o.get("data").ok_or_else(|| ProtocolError(format!("input {name} has no \"data\"")))?;
            json_elements(&name, datatype, data, bytes)?.into()
        }
    };
    if data.len() != bytes {
        return err(format!(
            "input {name}: shape {shape:?} of {} needs {bytes} bytes, {} given",
            datatype.name(),
            data.len()
        ));
    }
    Ok(Tensor { name, datatype, shape, data })
}

/// A JSON tensor (a flat or nested list of numbers) as raw bytes, at most
/// `max` of them.
fn json_elements(name: &str, dt: Datatype, data: &Value, max: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(max.min(1 << 20));
    let mut stack = vec![data];
    // Depth-first, left to right: the row-major order of a nested list.
    let mut pending: Vec<&Value> = Vec::new();
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => {
                pending.clear();
                pending.extend(items.iter().rev());
                stack.append(&mut pending);
            }
            v => {
                if out.len() + dt.size() > max {
                    return err(format!("input {name}: \"data\" has more elements than its shape"));
                }
                push_element(name, dt, v, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn push_element(name: &str, dt: Datatype, v: &Value, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let bad = || ProtocolError(format!("input {name}: {v} is not a {} value", dt.name()));
    let int = |lo: i64, hi: i64| v.as_i64().filter(|x| (lo..=hi).contains(x)).ok_or_else(bad);
    match dt {
        Datatype::Bool => out.push(u8::from(v.as_bool().ok_or_else(bad)?)),
        Datatype::U8 => out.push(int(0, 255)? as u8),
        Datatype::I8 => out.push(int(-128, 127)? as i8 as u8),
        Datatype::I16 => out.extend_from_slice(&(int(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes()),
        Datatype::I32 => out.extend_from_slice(&(int(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes()),
        Datatype::I64 => out.extend_from_slice(&v.as_i64().ok_or_else(bad)?.to_le_bytes()),
        Datatype::F32 => out.extend_from_slice(&(v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
        Datatype::F64 => out.extend_from_slice(&v.as_f64().ok_or_else(bad)?.to_le_bytes()),
    }
    Ok(())
}

/// A tensor's elements as JSON numbers (or booleans), flat.
fn json_data(t: &Tensor) -> Value {
    let size = t.datatype.size();
    let values = t.data.chunks_exact(size).map(|c| match t.datatype {
        Datatype::Bool => json!(c[0] != 0),
        Datatype::U8 => json!(c[0]),
        Datatype::I8 => json!(c[0] as i8),
        Datatype::I16 => json!(i16::from_le_bytes([c[0], c[1]])),
        Datatype::I32 => json!(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        Datatype::I64 => json!(i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
        Datatype::F32 => json!(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        Datatype::F64 => json!(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
    });
    Value::Array(values.collect())
}

/// A REST response body, and the length of its JSON part when raw tensors
/// follow it (for `Inference-Header-Content-Length`). `binary(name)` says
/// which outputs go as raw bytes.
pub fn encode_response(r: &InferResponse, binary: impl Fn(&str) -> bool) -> (Vec<u8>, Option<usize>) {
    let mut raw: Vec<&[u8]> = Vec::new();
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|t| {
            let mut o = json!({"name": t.name, "datatype": t.datatype.name(), "shape": t.shape});
            if binary(&t.name) {
                o["parameters"] = json!({"binary_data_size": t.data.len()});
                raw.push(&t.data);
            } else {
                o["data"] = json_data(t);
            }
            o
        })
        .collect();
    let mut doc = json!({"model_name": r.model_name, "model_version": r.model_version, "outputs": outputs});
    if !r.id.is_empty() {
        doc["id"] = json!(r.id);
    }
    let mut body = serde_json::to_vec(&doc).unwrap_or_default();
    if raw.is_empty() {
        return (body, None);
    }
    let head = body.len();
    for d in raw {
        body.extend_from_slice(d);
    }
    (body, Some(head))
}

/// The protocol's error body.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"error": message})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn json_and_binary_inputs_read_the_same() {
        let json = br#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#;
        let a = parse_request(&Bytes::from_static(json), None).unwrap();
        assert_eq!(a.id, "7");
        assert_eq!(a.inputs[0].data, f32s(&[1.0, 2.0, 3.5, 4.0]));
        let head = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        body.extend(f32s(&[1.0, 2.0, 3.5, 4.0]));
        let b = parse_request(&body.into(), Some(head.len())).unwrap();
        assert_eq!(b.inputs, a.inputs);
        assert_eq!(b.outputs, vec![Requested { name: "y".into(), binary: true }]);
        let c = parse_request(&Bytes::from_static(br#"{"inputs":[{"name":"t","shape":[3],"datatype":"INT64","data":[1,-2,3]}],"parameters":{"binary_data_output":true,"timeout":5000}}"#), None).unwrap();
        assert!(c.binary_outputs);
        assert_eq!(c.timeout_us, Some(5000));
        assert_eq!(c.inputs[0].data, [1i64, -2, 3].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        let cases: &[(&[u8], Option<usize>, &str)] = &[
            (b"not json", None, "not JSON"),
            (b"[]", None, "JSON object"),
            (br#"{"inputs":[]}"#, None, "1 to 64 inputs"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#, None, "needs 8 bytes, 4 given"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#, None, "more elements"),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
                None,
                "BYTES is not supported",
            ),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}"#, None, "300 is not a UINT8"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, None, "not a shape"),
            (
                br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,16],"datatype":"FP32","data":[]}]}"#,
                None,
                "too large",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                Some(200),
                "Inference-Header-Content-Length",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                None,
                "only 0 bytes",
            ),
            (br#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#, None, "no \"name\""),
        ];
        for (body, head, want) in cases {
            let e = parse_request(&Bytes::copy_from_slice(body), *head).unwrap_err().to_string();
            assert!(e.contains(want), "{} -> {e:?}, wanted {want:?}", String::from_utf8_lossy(body));
        }
        // Binary data beyond what the inputs take.
        let head = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = head.to_vec();
        body.extend([0u8; 8]);
        let e = parse_request(&body.into(), Some(head.len())).unwrap_err().to_string();
        assert!(e.contains("4 bytes of binary data after the inputs"), "{e}");
    }

    #[test]
    fn responses_carry_json_or_raw_outputs_as_asked() {
        let r = InferResponse {
            model_name: "m".into(),
            model_version: "3".into(),
            id: "q".into(),
            outputs: vec![
                Tensor {
                    name: "y".into(),
                    datatype: Datatype::F32,
                    shape: vec![1, 2],
                    data: f32s(&[0.5, -1.0]).into(),
                },
                Tensor {
                    name: "c".into(),
                    datatype: Datatype::I64,
                    shape: vec![1],
                    data: 7i64.to_le_bytes().to_vec().into(),
                },
            ],
        };
        let (body, head) = encode_response(&r, |n| n == "y");
        let head = head.unwrap();
        let doc: Value = serde_json::from_slice(&body[..head]).unwrap();
        assert_eq!(doc["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(doc["outputs"][1]["data"], json!([7]));
        assert_eq!(doc["id"], "q");
        assert_eq!(&body[head..], &f32s(&[0.5, -1.0])[..]);
        let (body, head) = encode_response(&r, |_| false);
        assert!(head.is_none());
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["outputs"][0]["data"], json!([0.5, -1.0]));
    }
}
