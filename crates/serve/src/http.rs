//! The Open Inference Protocol over HTTP, under `/v2` on the node's HTTP
//! port (behind the same token as `/api` when the cluster has a secret).
//! Errors are the protocol's form, `{"error": "…"}`, with a status that
//! says what kind: 400 a bad request, 404 an unknown model, 413 a body too
//! large, 429 a full queue, 503 no worker can take it, 504 its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::codec::{self, InferRequest};
use crate::entry::{ServeError, Serving};

/// The largest request body: what one message between nodes carries.
pub const MAX_BODY: usize = 64 << 20;
/// The header that says how long the JSON part of a body with raw
/// tensors is (the binary-data extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Where a body's raw tensors start in memory: a cache line's boundary
/// (and so their elements' alignment, which a model needs to read them
/// without a copy).
const BODY_ALIGN: usize = 64;

pub fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .with_state(serving)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], codec::error_body(message)).into_response()
}

fn json_response(v: Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub fn status_of(e: &ServeError) -> StatusCode {
    match e {
        ServeError::NotFound(_) => StatusCode::NOT_FOUND,
        ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ServeError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The server's metadata (the protocol's `ServerMetadata`).
pub fn server_metadata_doc() -> Value {
    json!({"name": "idunno", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]})
}

async fn server_metadata() -> Response {
    json_response(server_metadata_doc())
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(s): State<Arc<Serving>>) -> StatusCode {
    if s.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// A model's metadata document, or why there is none.
pub fn model_metadata_doc(s: &Serving, name: &str, version: Option<&str>) -> Result<Value, ServeError> {
    let served = s.model(name).ok_or_else(|| ServeError::NotFound(format!("no served model named {name}")))?;
    let spec = &served.spec;
    if let Some(v) = version
        && v != spec.model_version.to_string()
    {
        return Err(ServeError::NotFound(format!("model {name} is served at version {}, not {v}", spec.model_version)));
    }
    let tensors = |ts: &[idunno_state::TensorSpec]| -> Vec<Value> {
        ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
    };
    Ok(json!({
        "name": spec.name,
        "versions": [spec.model_version.to_string()],
        "platform": spec.platform,
        "inputs": tensors(&spec.inputs),
        "outputs": tensors(&spec.outputs),
    }))
}

async fn model_metadata(State(s): State<Arc<Serving>>, Path(name): Path<String>) -> Response {
    match model_metadata_doc(&s, &name, None) {
        Ok(v) => json_response(v),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

async fn model_metadata_version(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match model_metadata_doc(&s, &name, Some(&version)) {
        Ok(v) => json_response(v),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// Whether a model is ready: served, and loaded by at least one worker.
pub fn model_is_ready(s: &Serving, name: &str, version: Option<&str>) -> bool {
    s.model(name).is_some_and(|m| {
        !m.ready.is_empty() && version.is_none_or(|v| v.is_empty() || v == m.spec.model_version.to_string())
    })
}

async fn model_ready(State(s): State<Arc<Serving>>, Path(name): Path<String>) -> StatusCode {
    if model_is_ready(&s, &name, None) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn model_ready_version(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
) -> StatusCode {
    if model_is_ready(&s, &name, Some(&version)) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn infer(State(s): State<Arc<Serving>>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    run(s, name, None, headers, body).await
}

async fn infer_version(
    State(s): State<Arc<Serving>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(s, name, Some(version), headers, body).await
}

async fn run(s: Arc<Serving>, name: String, version: Option<String>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        && !enc.eq_ignore_ascii_case("identity")
    {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &format!("Content-Encoding {enc} is not supported"));
    }
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => return error(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length is not a byte count"),
        },
    };
    let body = match read_body(&headers, body, header_len).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let req: InferRequest = match codec::parse_request(&body, header_len) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    drop(body);
    let binary_default = req.binary_outputs;
    let asked: Vec<(String, bool)> = req.outputs.iter().map(|o| (o.name.clone(), o.binary)).collect();
    let deadline = Some(started + crate::entry::DEFAULT_DEADLINE);
    match s.infer(&name, version.as_deref(), req, deadline).await {
        Ok(resp) => {
            let binary = |n: &str| asked.iter().find(|(a, _)| a == n).map_or(binary_default, |(_, b)| *b);
            let (body, head) = codec::encode_response(&resp, binary);
            let mut r = Response::new(Body::from(body));
            let h = r.headers_mut();
            match head {
                Some(n) => {
                    h.insert(header::CONTENT_TYPE, "application/octet-stream".parse().expect("a header value"));
                    if let Ok(v) = n.to_string().parse() {
                        h.insert(HEADER_LENGTH, v);
                    }
                }
                None => {
                    h.insert(header::CONTENT_TYPE, "application/json".parse().expect("a header value"));
                }
            }
            r
        }
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// The body, copied into one buffer as it arrives (sized by its
/// Content-Length, so no copy is left once its last byte is in), or the
/// answer that refuses it. Byte `aligned_at` of the body (where the raw
/// tensors of the binary-data extension start) lands on a
/// [`BODY_ALIGN`]-byte boundary, so the model reads them where they are.
async fn read_body(headers: &HeaderMap, body: Body, aligned_at: Option<usize>) -> Result<Bytes, Response> {
    use bytes::Buf;
    use tokio_stream::StreamExt;
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is larger than {} MiB", MAX_BODY >> 20));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) + BODY_ALIGN);
    if let Some(at) = aligned_at {
        let pad = (BODY_ALIGN - (buf.as_ptr() as usize).wrapping_add(at) % BODY_ALIGN) % BODY_ALIGN;
        buf.resize(pad, 0);
        buf.advance(pad);
    }
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| error(StatusCode::BAD_REQUEST, &format!("the request body could not be read: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// (For the gRPC side: the same default deadline.)
pub fn default_deadline() -> Duration {
    crate::entry::DEFAULT_DEADLINE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body in chunks of awkward sizes, as hyper hands them over.
    fn chunked(bytes: &[u8], sizes: &[usize]) -> Body {
        let mut parts: Vec<Result<Bytes, std::io::Error>> = Vec::new();
        let mut at = 0;
        for n in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + n).min(bytes.len());
            parts.push(Ok(Bytes::copy_from_slice(&bytes[at..end])));
            at = end;
        }
        Body::from_stream(tokio_stream::iter(parts))
    }

    fn with_length(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, n.to_string().parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_body_is_read_whole_with_its_raw_tensors_on_an_aligned_address() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for header_len in [0, 1, 37, 63, 64, 65, 1000] {
            for declared in [true, false] {
                let headers = if declared { with_length(body.len()) } else { HeaderMap::new() };
                let read = read_body(&headers, chunked(&body, &[1, 999, 8192, 13]), Some(header_len)).await.unwrap();
                assert_eq!(&read[..], &body[..], "header {header_len}, declared {declared}");
                if declared {
                    let at = read[header_len..].as_ptr() as usize;
                    assert_eq!(at % BODY_ALIGN, 0, "the raw part at {at:#x} after a header of {header_len} bytes");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_or_while_it_is_read() {
        let refused = read_body(&with_length(MAX_BODY + 1), Body::empty(), None).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = vec![0u8; MAX_BODY + 1];
        let refused = read_body(&HeaderMap::new(), chunked(&body, &[1 << 20]), Some(10)).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
