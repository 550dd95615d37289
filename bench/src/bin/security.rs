//! bench/security: what the cluster secret costs.
//!
//! Two 3-node local clusters of the same binary run side by side, one
//! without a secret (`up --insecure`: plaintext on loopback) and one with
//! it (TLS on every connection, sealed SWIM datagrams). Each figure is
//! measured on both, alternately, `--rounds` times:
//!
//! 1. commits/s: 16 concurrent clients applying small commands at the
//!    leader (node credentials on the secured cluster: `Apply` is a
//!    node-to-node method);
//! 2. `fs put` and `fs get` of a `--mib` MiB file through the CLI (a new
//!    process, a new TLS handshake, each time), MiB/s;
//! 3. tiny-model queries/s: a job of `tiny-add` at batch size 1 over the
//!    cluster's workers (every query a Work call to the leader and a
//!    result back through SDFS and Raft).
//!
//! Prints each figure for both and the ratio secured / insecure; the
//! target is ≥ 0.9.
//!
//! `cargo run --release -p idunno-bench --bin security -- --rounds 2`

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_auth::Role;
use idunno_bench::{Cluster, idunno_bin, median};
use idunno_rpc::{CoordinatorClient, Limited, v1};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Commands per commit measurement.
    #[arg(long, default_value_t = 3000)]
    commands: usize,
    /// Size of the file put and got.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Only these measurements (comma-separated: calls, files, queries).
    #[arg(long, default_value = "calls,files,queries")]
    only: String,
    /// Seconds of each query-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// One of the two clusters and how to talk to it.
struct Side {
    name: &'static str,
    cluster: Cluster,
    /// Environment for CLI commands (the insecure side has no secret).
    env: Vec<(&'static str, String)>,
    /// Role of this process's own gRPC clients (`None`: plaintext).
    role: Option<Role>,
}

impl Side {
    fn cli(&self, args: &[&str]) -> Value {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--json", "--node", &self.cluster.node(1).rpc]);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = idunno_testkit::run_with_env(&idunno_bin(), &full, &env, Duration::from_secs(300));
        assert!(out.status.success(), "{} idunno {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn leader_rpc(&self) -> String {
        let id = self.cli(&["status"])["leader"].as_u64().expect("a leader");
        self.cluster.node(id).rpc.clone()
    }
}

const PROGRESS: &str = r#"{"op":"record_progress","job":"bench","queries":1,"inputs":1}"#;
const JOB: &str = r#"{"op":"add_job","spec":{"name":"bench","model":"m","inputs":"i","labels":null,"batch_size":1}}"#;

/// Commits per second with 16 concurrent clients at the leader.
async fn commits(side: &Side, n: usize) -> f64 {
    idunno_bench::use_secret(side.role);
    let leader = side.leader_rpc();
    let clients = 16;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let addr = leader.clone();
        tasks.push(tokio::spawn(async move {
            let ch = idunno_rpc::connect_channel(&addr, Duration::from_secs(5)).await.expect("connect");
            let mut c = CoordinatorClient::new(ch).limited();
            for _ in 0..n / clients {
                let req = v1::ApplyRequest { command_json: PROGRESS.as_bytes().to_vec(), forwarded: false };
                c.apply(req).await.expect("apply");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    (n / clients * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Median microseconds of a unary call (`Node.Status`) on one connection.
async fn round_trip(side: &Side, n: usize) -> f64 {
    idunno_bench::use_secret(side.role);
    let ch = idunno_rpc::connect_channel(&side.cluster.node(1).rpc, Duration::from_secs(5)).await.expect("connect");
    let mut c = idunno_rpc::NodeClient::new(ch).limited();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.status(v1::StatusRequest {}).await.expect("status");
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    median(&times)
}

/// (put MiB/s, get MiB/s) of `file` through the CLI.
fn put_get(side: &Side, file: &Path, mib: usize, round: usize) -> (f64, f64) {
    let name = format!("big-{round}");
    let t = Instant::now();
    side.cli(&["fs", "put", file.to_str().unwrap(), &name]);
    let put = mib as f64 / t.elapsed().as_secs_f64();
    let back = file.with_extension("back");
    let t = Instant::now();
    side.cli(&["fs", "get", &name, back.to_str().unwrap()]);
    let get = mib as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&back);
    side.cli(&["fs", "delete", &name]);
    (put, get)
}

/// Queries per second of a new job of the tiny model over `seconds`. A
/// new job each time: the leader rewrites a job's whole results file at
/// every flush (issue 15), so a job slows as it ages, and the two sides
/// must be compared at the same age.
fn queries(side: &Side, seconds: f64, round: usize) -> f64 {
    let job = format!("tiny-{round}");
    side.cli(&["job", "add", &job, "--model", "tiny.onnx", "--inputs", "x.npy", "--batch-size", "1"]);
    side.cli(&["job", "start", &job]);
    let done = || side.cli(&["job", "status", &job])[0]["queries_done"].as_u64().unwrap_or(0);
    let warm = Instant::now();
    while done() < 50 && warm.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (t1, q1) = (Instant::now(), done());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (t2, q2) = (Instant::now(), done());
    side.cli(&["job", "stop", &job]);
    side.cli(&["job", "remove", &job]);
    (q2 - q1) as f64 / (t2 - t1).as_secs_f64()
}

fn row(what: &str, unit: &str, insecure: &[f64], secure: &[f64]) {
    let (a, b) = (median(insecure), median(secure));
    let fmt = |xs: &[f64]| xs.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
    // A time is better smaller: its ratio is inverted so that, like the
    // rates', 1.0 means no cost and 0.9 is the target.
    let ratio = if unit == "µs" { a / b } else { b / a };
    println!(
        "{what:<22} insecure {a:>9.1} {unit} ({})   secured {b:>9.1} {unit} ({})   ratio {ratio:.3}",
        fmt(insecure),
        fmt(secure),
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let no_secret = ("IDUNNO_SECRET_FILE", String::new());
    let plain = Cluster::up_with(&idunno_bin(), 3, None, &[("IDUNNO_SECRET_FILE", "")], &["--insecure"]);
    let secured = idunno_bench::cluster(3, None);
    let sides = [
        Side { name: "insecure", cluster: plain, env: vec![no_secret], role: None },
        Side {
            name: "secured",
            cluster: secured,
            env: vec![("IDUNNO_SECRET_FILE", idunno_testkit::secret_file().display().to_string())],
            role: Some(Role::Node),
        },
    ];
    println!(
        "bench/security: two 3-node local clusters side by side, without and with the cluster secret; {} rounds, binary {}",
        args.rounds,
        idunno_bin().display()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("big");
    std::fs::write(&file, (0..args.mib << 20).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()).expect("file");
    let assets = idunno_ml::onnx::assets_dir();
    for side in &sides {
        idunno_bench::use_secret(side.role);
        // The command table's job exists for record_progress to count.
        let leader = side.leader_rpc();
        let ch = idunno_rpc::connect_channel(&leader, Duration::from_secs(5)).await.expect("connect");
        CoordinatorClient::new(ch)
            .apply(v1::ApplyRequest { command_json: JOB.as_bytes().to_vec(), forwarded: false })
            .await
            .expect("add the bench job");
        side.cli(&["fs", "put", assets.join("models/tiny-add.onnx").to_str().unwrap(), "tiny.onnx"]);
        side.cli(&["fs", "put", assets.join("datasets/tiny/x.npy").to_str().unwrap(), "x.npy"]);
    }

    let mut rtt = [Vec::new(), Vec::new()];
    let mut c = [Vec::new(), Vec::new()];
    let mut put = [Vec::new(), Vec::new()];
    let mut get = [Vec::new(), Vec::new()];
    let mut q = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        // Alternate which side goes first: drift in the machine's load
        // falls on both.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        if args.only.contains("calls") {
            for i in order {
                rtt[i].push(round_trip(&sides[i], 2000).await);
            }
            for i in order {
                c[i].push(commits(&sides[i], args.commands).await);
            }
        }
        if args.only.contains("files") {
            for i in order {
                let (p, g) = put_get(&sides[i], &file, args.mib, round);
                put[i].push(p);
                get[i].push(g);
            }
        }
        if args.only.contains("queries") {
            for i in order {
                q[i].push(queries(&sides[i], args.seconds, round));
            }
        }
        println!("round {} done", round + 1);
    }
    let rows: [(&str, &str, &[Vec<f64>; 2]); 5] = [
        ("unary call (median)", "µs", &rtt),
        ("commits (16 clients)", "/s", &c),
        ("fs put", "MiB/s", &put),
        ("fs get", "MiB/s", &get),
        ("tiny-add b1 queries", "q/s", &q),
    ];
    for (what, unit, xs) in rows {
        if !xs[0].is_empty() {
            row(what, unit, &xs[0], &xs[1]);
        }
    }
}
