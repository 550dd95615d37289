//! bench/inference: one idunno worker against bare ONNX Runtime on the
//! same model, batch size and threads, in the same run.
//!
//! For each case, bare ONNX Runtime runs in this process (one session, one
//! thread, one batch after another, inputs prepared the way the worker
//! prepares them) for `--seconds`, before and after a one-node cluster (one
//! worker slot, one thread) runs the same model as a looping job for as
//! long. Printed: throughput of each and their ratio (target ≥ 0.95), the
//! p50 processing time the worker measured against bare p50, and the
//! per-query overhead `1/rate_idunno − 1/rate_bare` (target ≤ 0.3 ms on
//! the trivial model).
//!
//! `cargo run --release -p idunno-bench --bin inference -- --seconds 20`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{cluster, idunno_bin, median};
use idunno_ml::onnx::{OnnxModel, fit};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Only the cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

struct Case {
    name: &'static str,
    model: &'static str,
    inputs: &'static str,
    batch: u32,
}

const CASES: &[Case] = &[
    Case {
        name: "efficientnet-lite0 b8",
        model: "models/efficientnet-lite0.onnx",
        inputs: "datasets/photos/photos.npy",
        batch: 8,
    },
    Case {
        name: "efficientnet-lite0 b1",
        model: "models/efficientnet-lite0.onnx",
        inputs: "datasets/photos/photos.npy",
        batch: 1,
    },
    Case { name: "tiny-add b1", model: "models/tiny-add.onnx", inputs: "datasets/tiny/x.npy", batch: 1 },
    Case { name: "tiny-add b64", model: "models/tiny-add.onnx", inputs: "datasets/tiny/x.npy", batch: 64 },
];

fn asset(rel: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

/// Bare ONNX Runtime: (queries/s, p50 ms).
fn bare(case: &Case, seconds: f64) -> (f64, f64) {
    let mut model = OnnxModel::load(&std::fs::read(asset(case.model)).expect("model"), 1).expect("load");
    let set = idunno_ml::read_array(&std::fs::read(asset(case.inputs)).expect("inputs")).expect("parse");
    let sig = model.inputs()[0].clone();
    let n = set.samples();
    let b = case.batch as usize;
    let mut lat = Vec::new();
    let mut start = 0;
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        let len = b.min(n - start);
        let t = Instant::now();
        let batch = fit(&sig, set.rows(start, len)).expect("fit");
        let out = model.run(&[batch]).expect("run");
        std::hint::black_box(out);
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        start = if start + len >= n { 0 } else { start + len };
    }
    (lat.len() as f64 / t0.elapsed().as_secs_f64(), median(&lat))
}

fn cli(c: &idunno_bench::Cluster, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(1).rpc]);
    let out = idunno_testkit::run(&idunno_bin(), &full, Duration::from_secs(120));
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One idunno worker: (queries/s, worker-measured p50 ms, node RSS MiB).
fn idunno(case: &Case, seconds: f64) -> (f64, f64, f64) {
    let c = cluster(1, Some("[worker]\nslots = 1\nthreads = 1\n"));
    cli(&c, &["fs", "put", asset(case.model).to_str().unwrap(), "m.onnx"]);
    cli(&c, &["fs", "put", asset(case.inputs).to_str().unwrap(), "x.npy"]);
    let batch = case.batch.to_string();
    // A classifier's results are its classes (what a user of it keeps).
    let output = if case.name.starts_with("efficientnet") { "class" } else { "vector" };
    cli(
        &c,
        &["job", "add", "bench", "--model", "m.onnx", "--inputs", "x.npy", "--batch-size", &batch, "--output", output],
    );
    cli(&c, &["job", "start", "bench"]);
    let sample = || {
        let s = cli(&c, &["job", "status", "bench"]);
        (Instant::now(), s[0]["queries_done"].as_u64().unwrap_or(0))
    };
    // Warm up: the model loads, the first results are written.
    let warm = Instant::now();
    while sample().1 < 5 && warm.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (t1, q1) = sample();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (t2, q2) = sample();
    let st = cli(&c, &["job", "status", "bench"]);
    let rss = idunno_bench::rss_mib(c.node(1).pid).unwrap_or(f64::NAN);
    cli(&c, &["job", "stop", "bench"]);
    let rate = (q2 - q1) as f64 / (t2 - t1).as_secs_f64();
    (rate, st[0]["latency_ms"]["median"].as_f64().unwrap_or(f64::NAN), rss)
}

fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    println!(
        "bench/inference: bare ONNX Runtime (this process) vs one idunno worker; 1 thread each, {} s each",
        args.seconds
    );
    for case in CASES.iter().filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o))) {
        let (b1, p1) = bare(case, args.seconds / 2.0);
        let (rate, p50, rss) = idunno(case, args.seconds);
        let (b2, p2) = bare(case, args.seconds / 2.0);
        let bare_rss = idunno_bench::rss_mib(std::process::id()).unwrap_or(f64::NAN);
        let bare_rate = (b1 + b2) / 2.0;
        let bare_p50 = (p1 + p2) / 2.0;
        println!(
            "{:<24} bare {:>9.1} q/s (runs {:.1} / {:.1})  idunno {:>9.1} q/s  ratio {:.3}  p50 bare {:.3} ms, worker {:.3} ms (+{:.3})  overhead/query {:.3} ms  node RSS {:.0} MiB (bare process {:.0})",
            case.name,
            bare_rate,
            b1,
            b2,
            rate,
            rate / bare_rate,
            bare_p50,
            p50,
            p50 - bare_p50,
            (1000.0 / rate) - (1000.0 / bare_rate),
            rss,
            bare_rss,
        );
    }
}
