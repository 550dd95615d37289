//! bench/serve: online serving over the Open Inference Protocol, beside
//! bare ONNX Runtime and Ray Serve, in one run.
//!
//! Every figure of issue 18's table, on EfficientNet-Lite0 (the photos,
//! batch 8 per request, one ONNX Runtime thread) and on tiny-add (one row
//! per request):
//!
//! 1. **Throughput / bare**: a one-node cluster (one slot, one thread)
//!    answering two requests kept in flight over HTTP (binary extension),
//!    against bare ONNX Runtime in this process on the same batches. The
//!    one-node figures (1 and 2) are taken in rounds that alternate with
//!    bare's (`--rounds`, bare first in even rounds, last in odd ones):
//!    this machine's speed drifts by 30% over minutes, so each round is
//!    compared with bare's in the same round, and the table gives the
//!    median of the rounds' ratios and differences.
//! 2. **Added p50 latency** at one request in flight, over HTTP, against
//!    bare's p50; and on tiny-add over gRPC and HTTP, where the model costs
//!    nothing and what is measured is the serving path. Requests and bare
//!    runs alternate in blocks of 0.5 s within each round (a one-thread
//!    client, as tritonclient is), and so does an ideal server of the same
//!    model ([`Ideal`]: raw loopback TCP, the model run on the bytes where
//!    they land), which shows what moving a 4.8 MB request costs at all.
//! 3. **Idle memory**: the node's RSS once it has served the model and
//!    is idle.
//! 4. **kill -9 of a worker under load**: three nodes, four requests in
//!    flight to node 1, another node (not the leader) killed: requests that
//!    failed, and the time until throughput is back at ≥ 80% of what it was
//!    (the peer script's rule: a window of ~30 answers, sliding by 0.1 s).
//! 5. **Two models of 4× cost under overload**: the same model served
//!    twice, one sent batches of 8 and the other batches of 32, four
//!    requests in flight each, on one node with two slots: each one's
//!    request rate and their ratio max/min − 1 (target ≤ 0.05).
//!
//! Then `../shared/peers/ray_serve_bench.py` runs the same model, inputs,
//! batch and threads under Ray Serve (a virtualenv with `ray[serve]` is
//! made once under `~/.cache/idunno/peers/ray`), and the table is printed
//! side by side. The clusters run without a secret (`--insecure`, plain
//! HTTP and gRPC on loopback), as Ray Serve does.
//!
//! `cargo run --release -p idunno-bench --bin serve -- --seconds 20`
//! (`--no-ray` for idunno and bare ONNX Runtime alone, `--one-node` for
//! the one-node figures alone)

mod baselines;
mod client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster_insecure, idunno_bin, kill9, median, rss_mib};
use idunno_ml::Tensor;
use serde_json::Value;

use baselines::{Bare, Ideal, Latencies, beside_bare};
use client::{Proto, Req, Seen, http_get, load};

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// The one-node figures alternate with bare ONNX Runtime in this many
    /// rounds (the machine's speed drifts: each round's figures are
    /// compared with bare's in the same round).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds of load after the kill.
    #[arg(long, default_value_t = 12.0)]
    fault_tail: f64,
    /// Only the one-node figures (throughput, latency, memory).
    #[arg(long)]
    one_node: bool,
    /// Skip Ray Serve.
    #[arg(long)]
    no_ray: bool,
    /// The peer script (default: `../shared/peers/ray_serve_bench.py`
    /// beside the repository).
    #[arg(long)]
    peer: Option<PathBuf>,
}

const EFFNET: &str = "models/efficientnet-lite0.onnx";
const PHOTOS: &str = "datasets/photos/photos.npy";
const TINY: &str = "models/tiny-add.onnx";
const TINY_X: &str = "datasets/tiny/x.npy";
const BATCH: usize = 8;

fn asset(rel: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

/// `count` batches of `batch` rows of the set, cycling through it.
fn batches(set: &Tensor, batch: usize, count: usize) -> Vec<Tensor> {
    let n = set.samples();
    (0..count)
        .map(|i| {
            let rows: Vec<Tensor> = (0..batch).map(|j| set.rows((i * batch + j) % n, 1)).collect();
            let mut data = Vec::new();
            rows.iter().for_each(|r| data.extend_from_slice(&r.data));
            let mut shape = set.shape.clone();
            shape[0] = batch;
            Tensor { dtype: set.dtype, shape, data }
        })
        .collect()
}

/// `idunno ARGS --json` through node 1 of an insecure cluster.
fn cli(c: &Cluster, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(1).rpc]);
    let out =
        idunno_testkit::run_with_env(&idunno_bin(), &full, &[("IDUNNO_SECRET_FILE", "")], Duration::from_secs(120));
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Serve `file` (an asset) as `name` and wait until node `at` says it is
/// ready and `workers` workers have it loaded; the model's first input's
/// name.
async fn serve(c: &Cluster, name: &str, file: &str, max_batch: usize, workers: usize) -> String {
    let sdfs = format!("models/{name}.onnx");
    cli(c, &["fs", "put", asset(file).to_str().expect("utf-8"), &sdfs]);
    let max_batch = max_batch.to_string();
    cli(c, &["serve", "add", name, "--model", &sdfs, "--max-batch", &max_batch, "--max-delay-ms", "0"]);
    let http = &c.node(1).http;
    let start = Instant::now();
    loop {
        let ready = matches!(http_get(http, &format!("/v2/models/{name}/ready")).await, Ok((200, _)));
        let status = cli(c, &["serve", "status"]);
        let loaded = status
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == name))
            .and_then(|m| m["workers"].as_array().map(Vec::len))
            .unwrap_or(0);
        if ready && loaded >= workers {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{name} not ready on {workers} workers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, meta) = http_get(http, &format!("/v2/models/{name}")).await.expect("metadata");
    let meta: Value = serde_json::from_slice(&meta).expect("metadata json");
    meta["inputs"][0]["name"].as_str().expect("an input").to_string()
}

/// The peer script's recovery rule: windows holding ~30 answers at the
/// pre-kill rate slide by 0.1 s; the dip is the first window after the
/// kill below 80% of that rate, recovery the first later time at which the
/// windows ending then and half a window later are both back at ≥ 80%.
/// `None`: no dip; `Some(None)`: not back within the run.
fn recovery(seen: &Seen, pre_rate: f64, kill: f64, stop: f64) -> Option<Option<f64>> {
    let win = if pre_rate > 0.0 { (30.0 / pre_rate).max(1.0) } else { 1.0 };
    let rate_at = |t: f64| seen.ok.iter().filter(|(_, e)| *e > t - win && *e <= t).count() as f64 / win;
    let (frac, step) = (0.8, 0.1);
    let mut first_low = None;
    let mut t = kill + step;
    while t <= stop + 1e-9 {
        if first_low.is_none() {
            if t <= kill + win + 2.0 && rate_at(t) < frac * pre_rate {
                first_low = Some(t);
            }
        } else if t - win >= kill
            && rate_at(t) >= frac * pre_rate
            && t + win / 2.0 <= stop
            && rate_at(t + win / 2.0) >= frac * pre_rate
        {
            return Some(Some(t - kill));
        }
        t += step;
    }
    first_low.map(|_| None)
}

/// One round of the one-node figures, idunno's beside bare's.
#[derive(Default, Debug)]
struct Round {
    bare_qps: f64,
    bare_p50_ms: f64,
    qps: f64,
    one_http: Latencies,
    one_grpc: Latencies,
    tiny_grpc: Latencies,
    tiny_http: Latencies,
    /// At one request in flight over HTTP, from the node's `/metrics`: the
    /// mean time from a request's arrival (its body read and decoded) to
    /// its answer, and the worker slot's mean time per batch.
    node_ms: f64,
    slot_ms: f64,
}

/// The latencies of one kind over all rounds.
fn pooled(rounds: &[Round], f: impl Fn(&Round) -> &Latencies) -> Latencies {
    let mut all = Latencies::default();
    rounds.iter().for_each(|r| all.extend(f(r)));
    all
}

/// From the node's `/metrics` so far: its worker slots' time on served
/// batches and the batches, and the requests' time from arrival to answer
/// and the requests (seconds and counts).
async fn node_times(http: &str) -> [f64; 4] {
    let Ok((200, text)) = http_get(http, "/metrics").await else { return [f64::NAN; 4] };
    let sum = |metric: &str| -> f64 {
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    [
        sum("idunno_worker_served_busy_seconds_total"),
        sum("idunno_worker_served_batches_total"),
        sum("idunno_serve_request_duration_seconds_sum"),
        sum("idunno_serve_request_duration_seconds_count"),
    ]
}

/// The median over the rounds of `f`.
fn over(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    median(&rounds.iter().map(f).collect::<Vec<_>>())
}

/// What idunno measured.
#[derive(Default)]
struct Ours {
    rounds: Vec<Round>,
    idle_rss_mib: f64,
    kill_failed: usize,
    kill_errors: Vec<String>,
    kill_answers: usize,
    kill_recovery: Option<Option<f64>>,
    kill_pre_qps: f64,
    two: (f64, f64),
}

async fn ours(args: &Args, effnet: &[Tensor], tiny: &[Tensor]) -> Ours {
    let s = args.seconds;
    let mut o = Ours::default();

    eprintln!("idunno: one node, one slot, one thread, in {} rounds beside bare ONNX Runtime", args.rounds);
    let c = cluster_insecure(1, "[worker]\nslots = 1\nthreads = 1\n");
    let input = serve(&c, "effnet", EFFNET, BATCH, 1).await;
    let reqs: Vec<Req> = effnet.iter().map(|t| Req::new("effnet", &input, t)).collect();
    let tiny_input = serve(&c, "tiny", TINY, 1, 1).await;
    let tiny_reqs: Vec<Req> = tiny.iter().map(|t| Req::new("tiny", &tiny_input, t)).collect();
    let (http, rpc) = (c.node(1).http.clone(), c.node(1).rpc.clone());
    let mut bare = (Bare::new(EFFNET, effnet), Bare::new(TINY, tiny));
    load(Proto::Http, &http, &reqs, 2, 2.0).await;
    load(Proto::Grpc, &rpc, &tiny_reqs, 1, 1.0).await;
    // Its requests carry the JSON header and (say) 200 bytes of HTTP head
    // before the tensor.
    let head = reqs[0].header_len() + 200;
    let mut ideal = Ideal::start(EFFNET, effnet, head);
    let r = s / args.rounds.max(1) as f64;
    for k in 0..args.rounds.max(1) {
        let mut round = Round::default();
        let mut run_bare = |round: &mut Round| (round.bare_qps, round.bare_p50_ms) = bare.0.run(effnet, r);
        // Bare first in even rounds, last in odd ones.
        if k % 2 == 0 {
            run_bare(&mut round);
        }
        let seen = load(Proto::Http, &http, &reqs, 2, r).await;
        assert!(seen.failed.is_empty(), "failed requests: {:?}", &seen.failed[..seen.failed.len().min(3)]);
        round.qps = seen.rate(0.0, r);
        if k % 2 == 1 {
            run_bare(&mut round);
        }
        let before = node_times(&http).await;
        round.one_http = beside_bare(Proto::Http, &http, &reqs, effnet, &mut bare.0, Some(&mut ideal), r).await;
        let after = node_times(&http).await;
        let mean_ms = |k: usize| (after[k] - before[k]) * 1000.0 / (after[k + 1] - before[k + 1]);
        (round.slot_ms, round.node_ms) = (mean_ms(0), mean_ms(2));
        round.one_grpc = beside_bare(Proto::Grpc, &rpc, &reqs, effnet, &mut bare.0, None, r / 2.0).await;
        round.tiny_grpc = beside_bare(Proto::Grpc, &rpc, &tiny_reqs, tiny, &mut bare.1, None, r / 2.0).await;
        round.tiny_http = beside_bare(Proto::Http, &http, &tiny_reqs, tiny, &mut bare.1, None, r / 2.0).await;
        eprintln!(
            "  round {k}: bare {:.2} q/s p50 {:.2} ms | 2 in flight {:.2} q/s | 1 in flight, beside bare: p50 {:.2} ms HTTP against {:.2} (means: at the node {:.2} ms, the slot {:.2} ms), the ideal server {:.2} ms, {:.2} ms gRPC against {:.2}; tiny added {:.3} ms gRPC, {:.3} ms HTTP",
            round.bare_qps,
            round.bare_p50_ms,
            round.qps,
            median(&round.one_http.ours),
            median(&round.one_http.bare),
            round.node_ms,
            round.slot_ms,
            median(&round.one_http.ideal),
            median(&round.one_grpc.ours),
            median(&round.one_grpc.bare),
            round.tiny_grpc.added_ms(),
            round.tiny_http.added_ms(),
        );
        o.rounds.push(round);
    }
    // Idle after the load, as the peer script measures Ray's processes:
    // past the 3 s after which a node's idle slots give back what their
    // models keep between runs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    o.idle_rss_mib = rss_mib(c.node(1).pid).unwrap_or(f64::NAN);
    drop(c);
    if args.one_node {
        return o;
    }

    eprintln!("idunno: two models of 4x the cost, one node, two slots");
    let c = cluster_insecure(1, "[worker]\nslots = 2\nthreads = 1\n");
    let input = serve(&c, "light", EFFNET, BATCH, 1).await;
    serve(&c, "heavy", EFFNET, 4 * BATCH, 1).await;
    let set = idunno_ml::read_array(&std::fs::read(asset(PHOTOS)).expect("photos")).expect("photos");
    let light: Vec<Req> = effnet.iter().map(|t| Req::new("light", &input, t)).collect();
    let heavy: Vec<Req> = batches(&set, 4 * BATCH, 4).iter().map(|t| Req::new("heavy", &input, t)).collect();
    let http = c.node(1).http.clone();
    let (l, h) = tokio::join!(load(Proto::Http, &http, &light, 4, s), load(Proto::Http, &http, &heavy, 4, s));
    // The first seconds fill the queues; the rates are those after.
    o.two = (l.rate(2.0, s), h.rate(2.0, s));
    eprintln!("  light {:.2} requests/s, heavy {:.2} requests/s", o.two.0, o.two.1);
    drop(c);

    eprintln!("idunno: kill -9 of a worker under load, three nodes");
    let c = cluster_insecure(3, "[worker]\nslots = 1\nthreads = 1\n");
    let input = serve(&c, "effnet", EFFNET, BATCH, 3).await;
    let reqs: Vec<Req> = effnet.iter().map(|t| Req::new("effnet", &input, t)).collect();
    let leader = cli(&c, &["status"])["leader"].as_u64().expect("a leader");
    let victim = (2..=3).find(|id| *id != leader).expect("a node that is not the leader");
    let http = c.node(1).http.clone();
    let kill_at = s / 2.0 + 2.0;
    let stop = kill_at + args.fault_tail;
    let pid = c.node(victim).pid;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(kill_at)).await;
        kill9(pid);
    });
    let seen = load(Proto::Http, &http, &reqs, 4, stop).await;
    killer.await.expect("killer");
    o.kill_pre_qps = seen.rate(2.0, kill_at);
    o.kill_answers = seen.ok.len();
    o.kill_failed = seen.failed.len();
    o.kill_errors = seen.failed.iter().take(3).map(|(_, e)| e.clone()).collect();
    o.kill_recovery = recovery(&seen, o.kill_pre_qps, kill_at, stop);
    eprintln!(
        "  node {victim} killed: {} answers, {} failed, {:.2} requests/s before, recovery {:?}",
        o.kill_answers, o.kill_failed, o.kill_pre_qps, o.kill_recovery
    );
    drop(c);
    o
}

/// The virtualenv with Ray Serve (made once), or why there is none.
fn ray_python() -> Result<PathBuf, String> {
    let home = std::env::var("HOME").map_err(|_| "no HOME".to_string())?;
    let venv = Path::new(&home).join(".cache/idunno/peers/ray");
    let python = venv.join("bin/python");
    let works = |p: &Path| {
        Command::new(p).args(["-c", "import ray.serve, onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success())
    };
    if works(&python) {
        return Ok(python);
    }
    eprintln!("making {} (ray[serve], onnxruntime, numpy)", venv.display());
    let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success())
        && Command::new(&python)
            .args(["-m", "pip", "install", "-q", "ray[serve]==2.60.0", "onnxruntime", "numpy"])
            .status()
            .is_ok_and(|s| s.success());
    if ok && works(&python) { Ok(python) } else { Err(format!("could not make {}", venv.display())) }
}

/// One run of the peer script; its JSON.
fn ray(python: &Path, script: &Path, args: &[&str]) -> Option<Value> {
    eprintln!("ray_serve_bench.py {}", args.join(" "));
    let out = Command::new(python).arg(script).args(args).arg("--json").output().ok()?;
    if !out.status.success() {
        eprintln!("the peer script failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

struct Theirs {
    main: Option<Value>,
    tiny: Option<Value>,
    fault: Option<Value>,
}

fn theirs(args: &Args) -> Option<Theirs> {
    if args.no_ray || args.one_node {
        return None;
    }
    let script = args
        .peer
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/ray_serve_bench.py"));
    if !script.exists() {
        eprintln!("no peer script at {}: Ray Serve is left out", script.display());
        return None;
    }
    let python = match ray_python() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}: Ray Serve is left out");
            return None;
        }
    };
    let s = format!("{}", args.seconds);
    let half = format!("{}", args.seconds / 2.0);
    let (effnet, photos, tiny) = (asset(EFFNET), asset(PHOTOS), asset(TINY));
    let (effnet, photos, tiny) = (effnet.to_str()?, photos.to_str()?, tiny.to_str()?);
    let b = BATCH.to_string();
    let main = ray(
        python.as_path(),
        &script,
        &["--model", effnet, "--inputs", photos, "--batch-size", &b, "--phases", "A,B,D", "--seconds", &s],
    );
    let tiny = ray(
        python.as_path(),
        &script,
        &[
            "--model",
            tiny,
            "--batch-size",
            "1",
            "--phases",
            "A,B",
            "--seconds",
            &half,
            "--concurrency",
            "1",
            "--b1-seconds",
            "0",
        ],
    );
    let fault = ray(
        python.as_path(),
        &script,
        &[
            "--model",
            effnet,
            "--inputs",
            photos,
            "--batch-size",
            &b,
            "--phases",
            "C",
            "--replicas",
            "2",
            "--concurrency",
            "4",
            "--seconds",
            &s,
        ],
    );
    Some(Theirs { main, tiny, fault })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn main() {
    let args = Args::parse();
    idunno_bench::use_secret(None);
    let set = idunno_ml::read_array(&std::fs::read(asset(PHOTOS)).expect("photos")).expect("photos");
    let effnet = batches(&set, BATCH, 8);
    let xs = idunno_ml::read_array(&std::fs::read(asset(TINY_X)).expect("tiny inputs")).expect("tiny inputs");
    let tiny = batches(&xs, 1, 8);

    // One thread, as a client such as tritonclient is: a request and its
    // answer cross no other thread of this process, and bare ONNX Runtime
    // runs (blocking it) with nothing of the client's in flight.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let o = rt.block_on(ours(&args, &effnet, &tiny));
    let rs = &o.rounds;
    let (bare_qps, bare_p50) = (over(rs, |r| r.bare_qps), over(rs, |r| r.bare_p50_ms));
    let t = theirs(&args);

    let main = t.as_ref().and_then(|t| t.main.as_ref());
    let ray_a = main.map(|m| &m["phases"]["A"]);
    let ray_b = main.map(|m| &m["phases"]["B"]);
    let ray_d = main.map(|m| &m["phases"]["D"]);
    let tiny_ray = t.as_ref().and_then(|t| t.tiny.as_ref());
    let fault = t.as_ref().and_then(|t| t.fault.as_ref()).map(|v| &v["phases"]["C"]);
    let na = || "—".to_string();

    println!();
    println!("| figure | idunno | Ray Serve 2.60 | target |");
    println!("|---|---|---|---|");
    println!(
        "| bare ONNX Runtime, EfficientNet-Lite0 b8: q/s, p50 (median of the rounds) | {bare_qps:.2} q/s, {bare_p50:.2} ms (Rust) | {} | |",
        ray_a.map_or_else(na, |a| format!("{:.2} q/s, {:.2} ms (Python)", f(&a["qps"]), f(&a["p50_ms"])))
    );
    println!(
        "| throughput / bare, 2 in flight (median of the rounds' ratios) | {:.3} ({:.2} q/s) | {} | ≥ 0.95 |",
        over(rs, |r| r.qps / r.bare_qps),
        over(rs, |r| r.qps),
        ray_b.zip(ray_a).map_or_else(na, |(b, a)| format!(
            "{:.3} ({:.2} q/s)",
            f(&b["qps"]) / f(&a["qps"]),
            f(&b["qps"])
        ))
    );
    println!(
        "| added p50, 1 in flight (blocks alternating with bare's, all rounds) | {:+.2} ms HTTP, {:+.2} ms gRPC | {} | ≤ 1 ms HTTP |",
        pooled(rs, |r| &r.one_http).added_ms(),
        pooled(rs, |r| &r.one_grpc).added_ms(),
        ray_b
            .zip(ray_a)
            .map_or_else(na, |(b, a)| format!("{:+.2} ms", f(&b["one_in_flight"]["p50_ms"]) - f(&a["p50_ms"])))
    );
    let one = pooled(rs, |r| &r.one_http);
    println!(
        "| an ideal server's added p50, 1 in flight (raw loopback TCP to a thread that runs the model on the bytes where they land) | {:+.2} ms (idunno's HTTP {:+.2} ms from it) | — | |",
        median(&one.ideal) - median(&one.bare),
        median(&one.ours) - median(&one.ideal),
    );
    println!(
        "| tiny-add b1: added p50, 1 in flight | {:+.3} ms gRPC, {:+.3} ms HTTP | {} | ≤ 0.3 ms gRPC |",
        pooled(rs, |r| &r.tiny_grpc).added_ms(),
        pooled(rs, |r| &r.tiny_http).added_ms(),
        tiny_ray
            .map_or_else(na, |v| format!("{:+.3} ms", f(&v["phases"]["B"]["p50_ms"]) - f(&v["phases"]["A"]["p50_ms"])))
    );
    let rec = |r: &Option<Option<f64>>| match r {
        None => "no dip below 80%".to_string(),
        Some(None) => "not back within the run".to_string(),
        Some(Some(s)) => format!("back in {s:.1} s"),
    };
    println!(
        "| kill -9 of a worker under load: failed, throughput | {} failed of {}, {} | {} | 0 failed, ≤ 2 s |",
        o.kill_failed,
        o.kill_answers + o.kill_failed,
        rec(&o.kill_recovery),
        fault.map_or_else(na, |c| format!(
            "{} failed, {}",
            c["errors_after_kill"],
            match (c["dip_below_80pct"].as_bool(), c["recovery_s"].as_f64()) {
                (Some(false), _) => "no dip below 80%".to_string(),
                (_, Some(s)) => format!("back in {s:.1} s"),
                _ => "not back within the run".to_string(),
            }
        ))
    );
    let ratio = o.two.0.max(o.two.1) / o.two.0.min(o.two.1) - 1.0;
    println!(
        "| two models, 4× cost, overload: requests/s, max/min − 1 | {:.2} / {:.2}, {ratio:.3} | {} | ≤ 0.05 |",
        o.two.0,
        o.two.1,
        ray_d.map_or_else(na, |d| format!(
            "{:.2} / {:.2}, {:.3}",
            f(&d["light"]["qps"]),
            f(&d["heavy"]["qps"]),
            f(&d["qps_ratio_max_over_min_minus_1"])
        ))
    );
    println!(
        "| idle memory serving one model | {:.0} MiB (the node's RSS) | {} | ≤ 1/5 of Ray |",
        o.idle_rss_mib,
        ray_b.map_or_else(na, |b| format!(
            "{:.0} MB RSS, {:.0} MB PSS (Ray's processes)",
            f(&b["idle_with_deployment"]["ray_procs_rss_mb"]),
            f(&b["idle_with_deployment"]["ray_procs_pss_mb"])
        ))
    );
    if !o.kill_errors.is_empty() {
        println!("\nfailed requests after the kill, first: {:?}", o.kill_errors);
    }
    if let Some(b) = ray_b {
        let ratio = o.idle_rss_mib / f(&b["idle_with_deployment"]["ray_procs_pss_mb"]);
        println!("\nidle memory, idunno RSS / Ray PSS: {ratio:.3}");
    }
}
