//! bench/training: the CNN trained on the real MNIST to the SPEC's 98.5%
//! test accuracy, by the cluster and by one process, in the same run.
//!
//! 1. Baseline: single-process candle training of the same net (same
//!    seed, batch, epochs, Adam) in this process, with 1 thread (what one
//!    cluster worker gets) and with as many threads as the machine has.
//! 2. `idunno train` on a fresh 4-node local cluster with 1, 2 and 3
//!    workers: wall time of the command (data loading included), test
//!    accuracy, and the scaling ratio against 1 worker.
//! 3. The 2-worker run again, with one worker (not the coordinator) killed
//!    at 40% of the steps: accuracy, and the time it added.
//!
//! `cargo run --release -p idunno-bench --bin training -- [--epochs 3] [--workers 1,2,3]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster, idunno_bin, kill9};
use idunno_ml::trained::{Arch, DataSet, Shape, Trainer};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "cnn")]
    arch: String,
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    #[arg(long, default_value = "0.001")]
    lr: String,
    /// Group sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    workers: Vec<u32>,
    /// Thread counts for the single-process baseline (0: the machine's).
    #[arg(long, value_delimiter = ',', default_value = "1,0")]
    baseline_threads: Vec<usize>,
    #[arg(long)]
    skip_kill: bool,
}

fn mnist(file: &str) -> String {
    let p = idunno_ml::onnx::assets_dir().join("datasets/mnist").join(file);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p.display().to_string()
}

fn cli(c: &Cluster, via: u64, args: &[&str], limit: Duration) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(via).rpc]);
    let out = idunno_testkit::run(&idunno_bin(), &full, limit);
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn load(kind: &str) -> DataSet {
    let read = |f: &str| idunno_ml::read_array(&std::fs::read(mnist(f)).expect("read")).expect("parse");
    DataSet::new(read(&format!("{kind}-images-idx3-ubyte")), &read(&format!("{kind}-labels-idx1-ubyte")), "x", "y")
        .expect("data set")
}

/// Train in this process; (seconds, test accuracy).
fn baseline(args: &Args, threads: usize) -> (f64, f64) {
    let data = Arc::new(load("train"));
    let test = load("t10k");
    let arch = Arch::parse(&args.arch).expect("arch");
    let shape = Shape::new(arch, &data.sample, data.classes(), data.dtype).expect("shape");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let lr: f32 = args.lr.parse().expect("lr");
    pool.install(|| {
        let started = Instant::now();
        let mut t = Trainer::new(shape, data, args.batch_size as usize, lr, 1).expect("trainer");
        let steps = t.steps_per_epoch() * u64::from(args.epochs);
        while t.step < steps {
            let g = t.shard_grads(0, 1).expect("grads");
            t.apply(&g.grads).expect("apply");
        }
        let (_, right) = t.net.evaluate(&test, 0..test.len()).expect("eval");
        (started.elapsed().as_secs_f64(), right as f64 / test.len() as f64)
    })
}

fn setup() -> Cluster {
    let c = cluster(4, None);
    for (file, name) in [
        ("train-images-idx3-ubyte", "x"),
        ("train-labels-idx1-ubyte", "y"),
        ("t10k-images-idx3-ubyte", "tx"),
        ("t10k-labels-idx1-ubyte", "ty"),
    ] {
        cli(&c, 1, &["fs", "put", &mnist(file), name], Duration::from_secs(120));
    }
    c
}

fn train_args(args: &Args, workers: u32) -> Vec<String> {
    let mut v: Vec<String> = ["train", "bench", "--arch", &args.arch, "--inputs", "x", "--labels", "y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(["--test-inputs", "tx", "--test-labels", "ty", "--out", "m"].map(String::from));
    v.extend(["--epochs".into(), args.epochs.to_string(), "--batch-size".into(), args.batch_size.to_string()]);
    v.extend(["--workers".into(), workers.to_string(), "--lr".into(), args.lr.clone()]);
    v
}

/// `idunno train` to the end; (seconds, test accuracy, status).
fn cluster_run(args: &Args, workers: u32) -> (f64, f64, Value) {
    let c = setup();
    let a = train_args(args, workers);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let started = Instant::now();
    let doc = cli(&c, 1, &a, Duration::from_secs(7200));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(doc["state"], "done", "{doc:#}");
    (secs, doc["test_accuracy"].as_f64().unwrap_or(0.0), doc)
}

fn status(c: &Cluster) -> Value {
    cli(c, 1, &["job", "status", "bench"], Duration::from_secs(30))[0].clone()
}

/// The 2-worker run with rank 1 killed at 40% of the steps.
fn kill_run(args: &Args) -> (f64, f64, Value) {
    let c = setup();
    let mut a = train_args(args, 2);
    a.push("--detach".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let started = Instant::now();
    cli(&c, 1, &a, Duration::from_secs(600));
    let leader = cli(&c, 1, &["status"], Duration::from_secs(10))["leader"].as_u64().unwrap_or(1);
    loop {
        let s = status(&c);
        let (step, steps) = (s["step"].as_u64().unwrap_or(0), s["steps"].as_u64().unwrap_or(1));
        if step * 10 >= steps * 4 {
            let victim = s["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .find(|w| *w != leader)
                .expect("a worker that is not the leader");
            println!("  killing worker {victim} at step {step} of {steps} (checkpoint at {})", s["checkpoint"]["step"]);
            kill9(c.node(victim).pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    loop {
        let s = status(&c);
        if s["state"] != "running" {
            assert_eq!(s["state"], "done", "{s:#}");
            return (started.elapsed().as_secs_f64(), s["test_accuracy"].as_f64().unwrap_or(0.0), s);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    println!(
        "bench/training: {} on MNIST (60k train, 10k test), {} epoch(s), batch {}, Adam lr {}",
        args.arch, args.epochs, args.batch_size, args.lr
    );
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for &threads in &args.baseline_threads {
        let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let (secs, acc) = baseline(&args, n);
        println!("  single process, {n} thread(s): {secs:.1} s, test accuracy {:.2}%", acc * 100.0);
        rows.push((format!("single process, {n} thread(s)"), secs, acc));
    }
    let mut by_workers = Vec::new();
    for &k in &args.workers {
        let (secs, acc, doc) = cluster_run(&args, k);
        println!(
            "  idunno train, {k} worker(s): {secs:.1} s (training {} s), test accuracy {:.2}%",
            doc["train_seconds"],
            acc * 100.0
        );
        rows.push((format!("idunno train, {k} worker(s)"), secs, acc));
        by_workers.push((k, secs));
    }
    let mut kill = None;
    if !args.skip_kill {
        let (secs, acc, doc) = kill_run(&args);
        println!(
            "  idunno train, 2 workers, one killed: {secs:.1} s, test accuracy {:.2}%, groups {}",
            acc * 100.0,
            doc["regroups"]
        );
        rows.push(("idunno train, 2 workers, one killed at 40%".into(), secs, acc));
        kill = Some(secs);
    }

    println!();
    println!("| run | wall time (s) | test accuracy | ≥ 98.5% |");
    println!("|---|---|---|---|");
    for (name, secs, acc) in &rows {
        println!("| {name} | {secs:.1} | {:.2}% | {} |", acc * 100.0, if *acc >= 0.985 { "yes" } else { "NO" });
    }
    let one = by_workers.iter().find(|(k, _)| *k == 1).map(|(_, s)| *s);
    if let Some(one) = one {
        for (k, secs) in &by_workers {
            println!("scaling, {k} worker(s): {:.2}× the 1-worker speed (ideal {k}×)", one / secs);
        }
        if let Some(base) = rows.first().filter(|(n, _, _)| n.contains("1 thread")).map(|r| r.1) {
            println!("1 worker vs the 1-thread single process: {:.2}× its time", one / base);
        }
    }
    if let (Some(k), Some((_, two))) = (kill, by_workers.iter().find(|(k, _)| *k == 2)) {
        println!("one worker killed: +{:.1} s over the undisturbed 2-worker run ({:.2}×)", k - two, k / two);
    }
}
