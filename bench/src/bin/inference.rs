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
//! With `--scrape`, instead: what watching the cluster costs the query
//! path. One worker runs the case's job while, in alternating rounds,
//! nothing reads the node, a scraper reads `/metrics` every second, or an
//! open dashboard polls its six API requests every second; each watched
//! round is compared with the mean of the unwatched rounds on either side
//! of it. Printed: the median ratio per mode (target ≥ 0.97).
//!
//! `cargo run --release -p idunno-bench --bin inference -- --seconds 20`
//! `cargo run --release -p idunno-bench --bin inference -- --scrape --only tiny --seconds 10`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{cluster, median};
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
    /// Measure the cost of scraping /metrics and of an open dashboard.
    #[arg(long)]
    scrape: bool,
    /// Rounds of each mode with --scrape.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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
    idunno_bench::cli_json(c, args)
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

/// What reads the node during a round of `--scrape`.
#[derive(Clone, Copy, PartialEq)]
enum Watch {
    Nothing,
    Metrics,
    Dashboard,
}

fn get(http: &str, path: &str, token: &str) {
    idunno_bench::https_get(http, path, token)
}

/// The job's rate while `watch` reads the node every second for `seconds`.
fn watched_rate(c: &idunno_bench::Cluster, token: &str, watch: Watch, seconds: f64) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = c.node(1).http.clone();
    let (flag, tok) = (stop.clone(), token.to_string());
    let reader = std::thread::spawn(move || {
        let mut after = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            match watch {
                Watch::Nothing => {}
                Watch::Metrics => get(&http, "/metrics", &tok),
                Watch::Dashboard => {
                    for p in ["/api/status", "/api/members", "/api/jobs", "/api/files", "/api/serve"] {
                        get(&http, p, &tok);
                    }
                    get(&http, &format!("/api/events?after={after}"), &tok);
                    get(&http, &format!("/api/history?after_ms={after}"), &tok);
                    after = idunno_net::now_ms();
                }
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
    });
    let count = || cli(c, &["job", "status", "bench"])[0]["queries_done"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let (t1, q1) = (Instant::now(), count());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (t2, q2) = (Instant::now(), count());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    (q2 - q1) as f64 / (t2 - t1).as_secs_f64()
}

fn scrape_cost(case: &Case, seconds: f64, rounds: usize) {
    let c = cluster(1, Some("[worker]\nslots = 1\nthreads = 1\n"));
    cli(&c, &["fs", "put", asset(case.model).to_str().unwrap(), "m.onnx"]);
    cli(&c, &["fs", "put", asset(case.inputs).to_str().unwrap(), "x.npy"]);
    let batch = case.batch.to_string();
    cli(
        &c,
        &[
            "job",
            "add",
            "bench",
            "--model",
            "m.onnx",
            "--inputs",
            "x.npy",
            "--batch-size",
            &batch,
            "--output",
            "vector",
        ],
    );
    cli(&c, &["job", "start", "bench"]);
    let url = cli(&c, &["dashboard-url"])["url"].as_str().unwrap_or_default().to_string();
    let token = url.rsplit_once("token=").map(|(_, t)| t.to_string()).expect("a token");
    std::thread::sleep(Duration::from_secs(3));
    // Each watched round sits between two unwatched ones and is compared
    // with their mean: the rate drifts as a run goes on (results pile up),
    // and bracketing cancels a drift that is steady.
    let mut before = watched_rate(&c, &token, Watch::Nothing, seconds);
    let (mut unwatched, mut ratios) = (vec![before], [Vec::new(), Vec::new()]);
    for _ in 0..rounds {
        for (i, m) in [Watch::Metrics, Watch::Dashboard].into_iter().enumerate() {
            let rate = watched_rate(&c, &token, m, seconds);
            let after = watched_rate(&c, &token, Watch::Nothing, seconds);
            ratios[i].push(rate / ((before + after) / 2.0));
            unwatched.push(after);
            before = after;
        }
    }
    // The node's CPU per read, which the ratios above are too noisy to
    // resolve: with the job stopped, 300 reads over one kept-alive
    // connection (as Prometheus and a browser read), the node's CPU
    // seconds before and after, less what it spends idle as long.
    cli(&c, &["job", "stop", "bench"]);
    std::thread::sleep(Duration::from_secs(2));
    let pid = c.node(1).pid;
    let http = c.node(1).http.clone();
    let cpu_ms_per = |paths: &[&str]| {
        let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sk", "-m", "120", "-H"]).arg(format!("Authorization: Bearer {token}"));
        for _ in 0..300 {
            for p in paths {
                cmd.arg(format!("https://{http}{p}"));
            }
        }
        let status = cmd.stdout(std::process::Stdio::null()).status().expect("curl");
        assert!(status.success(), "curl");
        let (busy, took) = (cpu_seconds(pid) - cpu0, t0.elapsed());
        let cpu1 = cpu_seconds(pid);
        std::thread::sleep(took);
        let idle = cpu_seconds(pid) - cpu1;
        (busy - idle).max(0.0) * 1000.0 / 300.0
    };
    let metrics_ms = cpu_ms_per(&["/metrics"]);
    let dashboard_ms = cpu_ms_per(idunno_bench::DASHBOARD_API);
    let fmt = |v: &[f64]| v.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" ");
    println!(
        "{:<24} unwatched {:.0}..{:.0} q/s  /metrics every 1 s: median ratio {:.3} ({})  dashboard open: median ratio {:.3} ({})",
        case.name,
        unwatched.iter().copied().fold(f64::MAX, f64::min),
        unwatched.iter().copied().fold(0.0, f64::max),
        median(&ratios[0]),
        fmt(&ratios[0]),
        median(&ratios[1]),
        fmt(&ratios[1]),
    );
    println!(
        "{:<24} node CPU per read (one kept-alive connection): /metrics {metrics_ms:.2} ms, the dashboard's 6 requests {dashboard_ms:.2} ms: once a second, {:.2}% and {:.2}% of one core",
        "",
        metrics_ms / 10.0,
        dashboard_ms / 10.0
    );
}

/// User and system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime, in clock ticks (100 a second on Linux).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    if args.scrape {
        println!(
            "bench/inference --scrape: one worker (1 slot, 1 thread); {} rounds of {} s per mode, each between unwatched ones",
            args.rounds, args.seconds
        );
        for case in CASES.iter().filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o))) {
            scrape_cost(case, args.seconds, args.rounds);
        }
        return;
    }
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
