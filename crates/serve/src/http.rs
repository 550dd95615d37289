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
    let body = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => return error(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length is not a byte count"),
        },
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
/// answer that refuses it.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    use tokio_stream::StreamExt;
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is larger than {} MiB", MAX_BODY >> 20));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
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
