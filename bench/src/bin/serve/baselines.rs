//! What bench/serve measures idunno against in the same run: bare ONNX
//! Runtime in this process, and an ideal server of the same model.

use std::time::{Duration, Instant};

use idunno_bench::median;
use idunno_ml::Tensor;
use idunno_ml::onnx::OnnxModel;

use crate::asset;
use crate::client::{Client, Proto, Req};

/// Bare ONNX Runtime in this process, one batch after another, the
/// model loaded once and warmed.
pub(crate) struct Bare(OnnxModel);

impl Bare {
    pub(crate) fn new(model: &str, input: &[Tensor]) -> Bare {
        let mut m = OnnxModel::load(&std::fs::read(asset(model)).expect("model"), 1).expect("load");
        let warm = Instant::now();
        let mut i = 0;
        while warm.elapsed() < Duration::from_secs(2) || i < 2 {
            std::hint::black_box(m.run(std::slice::from_ref(&input[i % input.len()])).expect("run"));
            i += 1;
        }
        Bare(m)
    }

    /// (queries/s, p50 ms) over `seconds`.
    pub(crate) fn run(&mut self, input: &[Tensor], seconds: f64) -> (f64, f64) {
        let t0 = Instant::now();
        let lat = self.latencies(input, seconds, 0);
        (lat.len() as f64 / t0.elapsed().as_secs_f64(), median(&lat))
    }

    /// Each run's time (ms), one batch after another for `seconds`,
    /// starting at batch `from`.
    pub(crate) fn latencies(&mut self, input: &[Tensor], seconds: f64, from: usize) -> Vec<f64> {
        let mut lat = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            let batch = &input[(from + lat.len()) % input.len()];
            std::hint::black_box(self.0.run(std::slice::from_ref(batch)).expect("run"));
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat
    }
}

/// Latencies (ms) at one request in flight and bare ONNX Runtime's over
/// the same stretch of time ([`beside_bare`]).
#[derive(Default, Debug)]
pub(crate) struct Latencies {
    pub(crate) ours: Vec<f64>,
    pub(crate) bare: Vec<f64>,
    /// The ideal server's, where measured ([`Ideal`]).
    pub(crate) ideal: Vec<f64>,
}

impl Latencies {
    pub(crate) fn added_ms(&self) -> f64 {
        median(&self.ours) - median(&self.bare)
    }

    pub(crate) fn extend(&mut self, other: &Latencies) {
        self.ours.extend(&other.ours);
        self.bare.extend(&other.bare);
        self.ideal.extend(&other.ideal);
    }
}

/// The least any server of a model could add on this machine: a thread
/// of this process that reads each request from a loopback TCP socket,
/// its tensor straight into one aligned buffer, runs the model (its own
/// session, as a node has) on those bytes where they landed, and writes
/// the outputs back; no HTTP, no queue, no other thread. A request is
/// `head` bytes (standing for HTTP's head and the JSON header) and the
/// tensor's; an answer, its length (8 bytes) and the first output's bytes.
pub(crate) struct Ideal {
    conn: std::net::TcpStream,
    server: Option<std::thread::JoinHandle<()>>,
    requests: Vec<Vec<u8>>,
    answer: Vec<u8>,
}

impl Ideal {
    pub(crate) fn start(model: &str, inputs: &[Tensor], head: usize) -> Ideal {
        use std::io::{Read, Write};
        let shape = inputs[0].shape.clone();
        let mut m = OnnxModel::load(&std::fs::read(asset(model)).expect("model"), 1).expect("load");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let _ = conn.set_nodelay(true);
            let mut head_buf = vec![0u8; head];
            let mut x = vec![0f32; shape.iter().product()];
            loop {
                if conn.read_exact(&mut head_buf).is_err() || conn.read_exact(bytemuck::cast_slice_mut(&mut x)).is_err()
                {
                    return;
                }
                let view = idunno_ml::TensorView {
                    dtype: idunno_ml::DType::F32,
                    shape: &shape,
                    data: bytemuck::cast_slice(&x),
                };
                let out = m.run_views(&[view]).expect("run");
                let mut answer = (out[0].data.len() as u64).to_le_bytes().to_vec();
                answer.extend_from_slice(&out[0].data);
                if conn.write_all(&answer).is_err() {
                    return;
                }
            }
        });
        let conn = std::net::TcpStream::connect(addr).expect("connect");
        let _ = conn.set_nodelay(true);
        let requests = inputs
            .iter()
            .map(|t| {
                let mut r = vec![0u8; head];
                r.extend_from_slice(&t.data);
                r
            })
            .collect();
        let mut ideal = Ideal { conn, server: Some(server), requests, answer: Vec::new() };
        ideal.latencies(2.0, 0);
        ideal
    }

    /// Each exchange's time (ms), one after another for `seconds`,
    /// starting at request `from`.
    pub(crate) fn latencies(&mut self, seconds: f64, from: usize) -> Vec<f64> {
        use std::io::{Read, Write};
        let mut lat = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            let request = &self.requests[(from + lat.len()) % self.requests.len()];
            self.conn.write_all(request).expect("send");
            let mut len = [0u8; 8];
            self.conn.read_exact(&mut len).expect("answer");
            self.answer.resize(u64::from_le_bytes(len) as usize, 0);
            self.conn.read_exact(&mut self.answer).expect("answer");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat
    }
}

impl Drop for Ideal {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// How long one block of [`beside_bare`] lasts.
pub(crate) const BLOCK_SECONDS: f64 = 0.5;

/// One request in flight to `addr` and bare ONNX Runtime's runs on the
/// same batches (`inputs`, the tensors `reqs` were made of), and the
/// ideal server's exchanges if there is one (the first of each block left
/// out: it follows the others' runs, which took its model's weights out
/// of the caches), in blocks of [`BLOCK_SECONDS`] that alternate for
/// `seconds`: each one's latencies (ms), taken over the same stretch of
/// time, so that a drift in the machine's speed falls on both alike.
pub(crate) async fn beside_bare(
    proto: Proto,
    addr: &str,
    reqs: &[Req],
    inputs: &[Tensor],
    bare: &mut Bare,
    mut ideal: Option<&mut Ideal>,
    seconds: f64,
) -> Latencies {
    let mut client = Client::new(proto, addr);
    let mut seen = Latencies::default();
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed().as_secs_f64() < seconds {
        let lat = bare.latencies(inputs, BLOCK_SECONDS, i);
        seen.bare.extend(lat.into_iter().skip(1));
        if let Some(ideal) = ideal.as_deref_mut() {
            let lat = ideal.latencies(BLOCK_SECONDS, i);
            seen.ideal.extend(lat.into_iter().skip(1));
        }
        let block = Instant::now();
        let mut first = true;
        while block.elapsed().as_secs_f64() < BLOCK_SECONDS {
            let start = Instant::now();
            let answer = client.infer(&reqs[i % reqs.len()]).await;
            answer.unwrap_or_else(|e| panic!("a request failed: {e}"));
            if !std::mem::take(&mut first) {
                seen.ours.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            i += 1;
        }
    }
    seen
}
