//! bench/fairness: two jobs of very different cost on a real 5-node local
//! cluster, and what failures do to their query rates. Each trial runs on
//! fresh clusters; every figure is printed per trial, then as mean and
//! standard deviation.
//!
//! 1. From 1 to 2 jobs: EfficientNet-Lite0 at 4 photos per query runs;
//!    the same model at 1 photo per query starts. After a full 10 s rate
//!    window: the rate ratio `max/min − 1` (target ≤ 0.05) and the split
//!    of the workers' time the scheduler chose.
//! 2. Time from `job start` of the second job to its first completed query
//!    (as counted by the coordinator; target ≤ 1 s).
//! 3. kill -9 of one worker, and of two at once: time until both jobs'
//!    rates (over the last second) are back within 20% of their rates
//!    before the kill (target ≤ 3 s).
//!
//! With 1, and a full rate window after the kills of 3 and 4: C5's
//! predicted rate against the measured one (issue 19: within 15%).
//! 4. kill -9 of the coordinator leader: the same (target ≤ 3 s).
//!
//! Rates for 3 and 4 come from the jobs' counts polled every 100 ms.
//!
//! `cargo run --release -p idunno-bench --bin fairness -- --trials 5`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster, idunno_bin, kill9};
use idunno_rpc::{JobsClient, Limited, v1};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Only question 4 (leader kills), keeping the cluster's logs of any
    /// recovery slower than 5 s under /tmp/idunno-slow-leader-N.
    #[arg(long)]
    leader_only: bool,
}

fn asset(rel: &str) -> String {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p.display().to_string()
}

fn cli(c: &Cluster, via: u64, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(via).rpc]);
    let out = idunno_testkit::run(&idunno_bin(), &full, Duration::from_secs(120));
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A cluster with the model and photos in SDFS and the costly job running.
fn setup() -> Cluster {
    let c = cluster(5, None);
    cli(&c, 1, &["fs", "put", &asset("models/efficientnet-lite0.onnx"), "m.onnx"]);
    cli(&c, 1, &["fs", "put", &asset("datasets/photos/photos.npy"), "x.npy"]);
    for (job, batch) in [("big", "4"), ("small", "1")] {
        let add =
            ["job", "add", job, "--model", "m.onnx", "--inputs", "x.npy", "--batch-size", batch, "--output", "class"];
        cli(&c, 1, &add);
    }
    cli(&c, 1, &["job", "start", "big"]);
    c
}

struct Poller {
    rt: tokio::runtime::Runtime,
    addrs: Vec<String>,
}

impl Poller {
    /// (big, small) queries done, from any node that answers.
    fn counts(&self) -> Option<(u64, u64)> {
        for addr in &self.addrs {
            let got = self.rt.block_on(async {
                let ch = idunno_rpc::connect_channel(addr, Duration::from_millis(300)).await.ok()?;
                let r = JobsClient::new(ch)
                    .limited()
                    .status(v1::JobQuery { job: String::new(), explain: false })
                    .await
                    .ok()?
                    .into_inner();
                let doc: Value = serde_json::from_slice(&r.json).ok()?;
                let get = |name: &str| {
                    doc.as_array()?.iter().find(|j| j["job"] == name).and_then(|j| j["queries_done"].as_u64())
                };
                Some((get("big")?, get("small")?))
            });
            if got.is_some() {
                return got;
            }
        }
        None
    }
}

/// Both jobs' rates over the trailing second, from samples every 100 ms.
struct Rates {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Rates {
    fn push(&mut self, t: Instant, (b, s): (u64, u64)) -> Option<(f64, f64)> {
        self.samples.push_back((t, b, s));
        while self.samples.len() > 2 && t - self.samples[1].0 >= Duration::from_secs(1) {
            self.samples.pop_front();
        }
        let (t0, b0, s0) = *self.samples.front()?;
        let dt = (t - t0).as_secs_f64();
        (dt >= 0.9).then(|| ((b - b0) as f64 / dt, (s - s0) as f64 / dt))
    }
}

/// Kill `victims`; seconds until both rates are back within 20% of what
/// they were before (None if not within 20 s).
fn recovery(c: &Cluster, victims: &[u64]) -> Option<f64> {
    let alive: Vec<String> = c.nodes.iter().filter(|n| !victims.contains(&n.id)).map(|n| n.rpc.clone()).collect();
    let p =
        Poller { rt: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt"), addrs: alive };
    let mut rates = Rates { samples: VecDeque::new() };
    // Before: the mean of 3 s of one-second rates.
    let mut before = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Some(r) = p.counts().and_then(|n| rates.push(Instant::now(), n)) {
            before.push(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = before.len().max(1) as f64;
    let (b0, s0) = (before.iter().map(|r| r.0).sum::<f64>() / n, before.iter().map(|r| r.1).sum::<f64>() / n);
    for v in victims {
        kill9(c.node(*v).pid);
    }
    let killed = Instant::now();
    let mut rates = Rates { samples: VecDeque::new() };
    while killed.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        // A rate window that starts after the kill.
        if let Some((b, s)) = p.counts().and_then(|n| rates.push(now, n))
            && b >= 0.8 * b0
            && s >= 0.8 * s0
        {
            // The window's middle: the rate reached it then.
            return Some((now - killed).as_secs_f64() - 0.5);
        }
    }
    None
}

fn leader(c: &Cluster) -> u64 {
    cli(c, 1, &["status"])["leader"].as_u64().expect("leader")
}

/// C5: the rate the fair split predicted over the one measured (the big
/// job's, from a `job status` document), minus 1.
fn prediction_error(status: &Value) -> Option<f64> {
    let big = status.as_array()?.iter().find(|x| x["job"] == "big")?;
    let measured = big["query_rate"].as_f64().filter(|r| *r > 0.0)?;
    Some(big["predicted_rate"].as_f64()? / measured - 1.0)
}

fn stats(name: &str, xs: &[f64], unit: &str) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let all: Vec<String> = xs.iter().map(|x| format!("{x:.3}")).collect();
    println!("{name:<46} mean {mean:.3}{unit}  sd {sd:.3}{unit}  ({})", all.join(", "));
}

fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    let (mut ratio, mut first, mut one, mut two, mut coord, mut split) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut misses = 0;
    // C5's predicted/measured − 1: two jobs on 5 workers, on 3 after two
    // were killed, on 4 after the leader was.
    let mut predicted: [Vec<f64>; 3] = Default::default();
    if args.leader_only {
        for trial in 1..=args.trials {
            let c = setup();
            cli(&c, 1, &["job", "start", "small"]);
            std::thread::sleep(Duration::from_secs(8));
            let r = recovery(&c, &[leader(&c)]);
            println!("trial {trial}: leader killed, rates back after {r:?} s");
            if r.is_none_or(|x| x > 5.0) {
                let keep = format!("/tmp/idunno-slow-leader-{trial}");
                let _ = std::process::Command::new("cp").args(["-r", &c.path().display().to_string(), &keep]).status();
                println!("  logs kept in {keep}");
            }
            coord.extend(r);
        }
        stats("4. rates back within 20%, leader killed", &coord, " s");
        return;
    }
    for trial in 1..=args.trials {
        // 1 and 2, then one worker killed.
        let c = setup();
        std::thread::sleep(Duration::from_secs(3));
        let p = Poller {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt"),
            addrs: vec![c.node(2).rpc.clone()],
        };
        let start = Instant::now();
        cli(&c, 1, &["job", "start", "small"]);
        while p.counts().is_none_or(|(_, s)| s == 0) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        first.push(start.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_secs(11));
        let st = cli(&c, 2, &["job", "status"]);
        let rate =
            |j: &str| st.as_array().unwrap().iter().find(|x| x["job"] == j).unwrap()["query_rate"].as_f64().unwrap();
        let share = |j: &str| {
            let x = st.as_array().unwrap().iter().find(|x| x["job"] == j).unwrap();
            x["worker_shares"].as_object().map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum::<f64>())
        };
        let (rb, rs) = (rate("big"), rate("small"));
        ratio.push(rb.max(rs) / rb.min(rs) - 1.0);
        predicted[0].extend(prediction_error(&st));
        split.push(share("big") / (share("big") + share("small")).max(1e-9));
        let l = leader(&c);
        let victim = (1..=5).rev().find(|id| *id != l).unwrap();
        let r1 = recovery(&c, &[victim]);
        drop(c);

        // Two workers at once.
        let c = setup();
        cli(&c, 1, &["job", "start", "small"]);
        std::thread::sleep(Duration::from_secs(8));
        let l = leader(&c);
        let victims: Vec<u64> = (1..=5).rev().filter(|id| *id != l).take(2).collect();
        let r2 = recovery(&c, &victims);
        // The prediction once a whole window has passed on 3 workers.
        std::thread::sleep(Duration::from_secs(11));
        predicted[1].extend(prediction_error(&cli(&c, 1, &["job", "status"])));
        drop(c);

        // The coordinator leader.
        let c = setup();
        cli(&c, 1, &["job", "start", "small"]);
        std::thread::sleep(Duration::from_secs(8));
        let l = leader(&c);
        let r3 = recovery(&c, &[l]);
        std::thread::sleep(Duration::from_secs(11));
        let via = (1..=5).find(|id| *id != l).unwrap();
        predicted[2].extend(prediction_error(&cli(&c, via, &["job", "status"])));
        drop(c);

        println!(
            "trial {trial}: rates {rb:.1} / {rs:.1} q/s (ratio {:.3}), big holds {:.0}% of worker time, first query {:.3} s, back after: 1 worker {r1:?} s, 2 workers {r2:?} s, leader {r3:?} s",
            ratio.last().unwrap(),
            100.0 * split.last().unwrap(),
            first.last().unwrap()
        );
        for (v, r) in [(&mut one, r1), (&mut two, r2), (&mut coord, r3)] {
            match r {
                Some(x) => v.push(x),
                None => misses += 1,
            }
        }
    }
    println!("bench/fairness over {} trials (5 nodes, EfficientNet-Lite0 at 4 vs 1 photo per query):", args.trials);
    stats("1. rate ratio max/min - 1 (target <= 0.05)", &ratio, "");
    stats("1. share of worker time of the 4x job", &split, "");
    stats("1. C5 predicted/measured - 1, 5 workers", &predicted[0], "");
    stats("1. C5 predicted/measured - 1, 3 (2 killed)", &predicted[1], "");
    stats("1. C5 predicted/measured - 1, leader killed", &predicted[2], "");
    stats("2. second job's first query after start", &first, " s");
    stats("3. rates back within 20%, 1 worker killed", &one, " s");
    stats("3. rates back within 20%, 2 workers killed", &two, " s");
    stats("4. rates back within 20%, leader killed", &coord, " s");
    if misses > 0 {
        println!("{misses} recoveries did not happen within 20 s (left out above)");
    }
}
