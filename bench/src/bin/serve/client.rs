//! bench/serve's clients: a served model's requests, and one connection
//! to a node over HTTP or gRPC, driven by the task that sends on it.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idunno_ml::Tensor;
use idunno_rpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use idunno_rpc::inference::{ModelInferRequest, model_infer_request::InferInputTensor};
use serde_json::json;
use tokio::net::TcpStream;

/// A served model's request, ready to send either way: its HTTP body (the
/// binary-data extension's JSON header, then the tensor's bytes) is made
/// once, and the tensor's bytes are a slice of it.
#[derive(Clone)]
pub(crate) struct Req {
    model: String,
    input: String,
    dtype: &'static str,
    shape: Vec<i64>,
    body: Bytes,
    header_len: usize,
}

impl Req {
    pub(crate) fn new(model: &str, input: &str, t: &Tensor) -> Req {
        let dtype = match t.dtype {
            idunno_ml::DType::F32 => "FP32",
            other => panic!("the bench sends FP32 inputs, not {other:?}"),
        };
        let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
        let header = json!({
            "inputs": [{"name": input, "shape": shape, "datatype": dtype,
                        "parameters": {"binary_data_size": t.data.len()}}],
            "parameters": {"binary_data_output": true},
        });
        let mut body = serde_json::to_vec(&header).expect("json");
        let header_len = body.len();
        body.extend_from_slice(&t.data);
        Req { model: model.into(), input: input.into(), dtype, shape, body: body.into(), header_len }
    }

    /// The length of the HTTP body's JSON header.
    pub(crate) fn header_len(&self) -> usize {
        self.header_len
    }

    pub(crate) fn grpc(&self) -> ModelInferRequest {
        ModelInferRequest {
            model_name: self.model.clone(),
            inputs: vec![InferInputTensor {
                name: self.input.clone(),
                datatype: self.dtype.into(),
                shape: self.shape.clone(),
                ..Default::default()
            }],
            raw_input_contents: vec![self.body.slice(self.header_len..)],
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Proto {
    Http,
    Grpc,
}

/// What one stream of requests saw: each answer's (start, end) seconds
/// from the load's start, and each failure's end and message.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) ok: Vec<(f64, f64)>,
    pub(crate) failed: Vec<(f64, String)>,
}

impl Seen {
    pub(crate) fn between(&self, from: f64, to: f64) -> Vec<(f64, f64)> {
        self.ok.iter().copied().filter(|(_, e)| *e >= from && *e < to).collect()
    }

    pub(crate) fn rate(&self, from: f64, to: f64) -> f64 {
        self.between(from, to).len() as f64 / (to - from)
    }
}

type Http1 = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection (kept alive) to a node's HTTP port, driven by
/// the task that sends on it (as a one-thread client such as Python's
/// tritonclient is): a request and its answer cross no other thread of
/// this process.
pub(crate) struct HttpConn {
    addr: String,
    conn: Option<(Sender, Pin<Box<Http1>>)>,
}

impl HttpConn {
    pub(crate) fn new(addr: &str) -> HttpConn {
        HttpConn { addr: addr.into(), conn: None }
    }

    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        header_len: Option<usize>,
    ) -> Result<(u16, Bytes), String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            self.conn = Some((sender, Box::pin(conn)));
        }
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", &self.addr);
        if let Some(n) = header_len {
            req = req.header("content-type", "application/octet-stream").header("inference-header-content-length", n);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let (sender, conn) = self.conn.as_mut().expect("connected");
        let exchange = async {
            // The connection takes a request only once done with the last one.
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let answer = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
            let status = answer.status().as_u16();
            let body = answer.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        };
        let result = tokio::select! {
            r = exchange => r,
            c = conn.as_mut() => Err(format!("the connection ended: {c:?}")),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

pub(crate) async fn http_get(addr: &str, path: &str) -> Result<(u16, Bytes), String> {
    HttpConn::new(addr).request("GET", path, Bytes::new(), None).await
}

/// One client's connection to a node, over either protocol, kept
/// between requests.
pub(crate) struct Client {
    proto: Proto,
    addr: String,
    http: HttpConn,
    grpc: Option<GrpcInferenceServiceClient<tonic::transport::Channel>>,
}

impl Client {
    pub(crate) fn new(proto: Proto, addr: &str) -> Client {
        Client { proto, addr: addr.into(), http: HttpConn::new(addr), grpc: None }
    }

    /// Send `req` and wait for its answer.
    pub(crate) async fn infer(&mut self, req: &Req) -> Result<(), String> {
        match self.proto {
            Proto::Http => {
                let path = format!("/v2/models/{}/infer", req.model);
                match self.http.request("POST", &path, req.body.clone(), Some(req.header_len)).await {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => Err(e),
                }
            }
            Proto::Grpc => {
                if self.grpc.is_none() {
                    self.grpc = idunno_rpc::connect_channel(&self.addr, Duration::from_secs(5))
                        .await
                        .ok()
                        .map(GrpcInferenceServiceClient::new);
                }
                match self.grpc.as_mut() {
                    Some(c) => c
                        .model_infer(req.grpc())
                        .await
                        .map(drop)
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                    None => Err("could not connect".into()),
                }
            }
        }
    }
}

/// Keep `in_flight` of `reqs` (cycled) in flight to `addr` for `seconds`.
pub(crate) async fn load(proto: Proto, addr: &str, reqs: &[Req], in_flight: usize, seconds: f64) -> Seen {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..in_flight {
        let (addr, reqs) = (addr.to_string(), reqs.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut client = Client::new(proto, &addr);
            let mut i = k;
            while t0.elapsed().as_secs_f64() < seconds {
                let start = t0.elapsed().as_secs_f64();
                let result = client.infer(&reqs[i % reqs.len()]).await;
                let end = t0.elapsed().as_secs_f64();
                match result {
                    Ok(()) => seen.ok.push((start, end)),
                    Err(e) => {
                        seen.failed.push((end, e));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += in_flight;
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.expect("client task");
        all.ok.extend(s.ok);
        all.failed.extend(s.failed);
    }
    all.ok.sort_by(|a, b| a.1.total_cmp(&b.1));
    all
}
