//! bench/dashboard: how fast the dashboard paints, as a real browser times
//! it (target: first paint ≤ 300 ms on loopback), on an idle cluster and
//! on one running two jobs flat out, and how long each of its API
//! requests takes.
//!
//! Headless Chromium opens `/` of a 3-node cluster (with its login token,
//! over HTTPS) `--runs` times in fresh profiles; the page keeps the
//! browser's `first-paint` and `first-contentful-paint` times in its
//! `<html>` attributes, which the dumped DOM carries back.
//!
//! `cargo run --release -p idunno-bench --bin dashboard -- --runs 10`

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{cluster, median};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Page loads per case.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

fn cli(c: &idunno_bench::Cluster, args: &[&str]) -> Value {
    idunno_bench::cli_json(c, args)
}

fn chromium() -> PathBuf {
    let out = Command::new("which").arg("chromium").output().expect("which");
    assert!(out.status.success(), "no chromium: scripts/setup installs it as root");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// (first paint, first contentful paint) in ms, as Chromium timed one load.
fn load(chromium: &PathBuf, url: &str) -> (f64, f64) {
    let profile = tempfile::tempdir().expect("tempdir");
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=3000", "--dump-dom", url])
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let attr = |name: &str| -> f64 {
        dom.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (attr("data-first-paint-ms"), attr("data-first-contentful-paint-ms"))
}

/// Milliseconds of one GET with the token (a new TLS connection each).
fn get_ms(http: &str, path: &str, token: &str) -> f64 {
    let t = Instant::now();
    idunno_bench::https_get(http, path, token);
    t.elapsed().as_secs_f64() * 1000.0
}

fn case(name: &str, c: &idunno_bench::Cluster, token: &str, runs: usize) {
    let browser = chromium();
    let url = format!("https://{}/?token={token}", c.node(2).http);
    let (mut fp, mut fcp) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (a, b) = load(&browser, &url);
        fp.push(a);
        fcp.push(b);
    }
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "{name:<28} first paint median {:.0} ms (worst {:.0})  first contentful paint median {:.0} ms (worst {:.0})  over {runs} loads",
        median(&fp),
        max(&fp),
        median(&fcp),
        max(&fcp)
    );
    let http = &c.node(2).http;
    let paths: Vec<&str> =
        ["/"].into_iter().chain(idunno_bench::DASHBOARD_API.iter().copied()).chain(["/metrics"]).collect();
    let times: Vec<String> = paths
        .iter()
        .map(|p| {
            let v: Vec<f64> = (0..5).map(|_| get_ms(http, p, token)).collect();
            format!("{p} {:.1}", median(&v))
        })
        .collect();
    println!("{:<28} one GET (curl, new TLS connection each), median ms: {}", "", times.join(", "));
}

fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    println!("bench/dashboard: headless Chromium loads / of node 2 of a 3-node cluster, fresh profile each time");
    let c = cluster(3, None);
    let url = cli(&c, &["dashboard-url"])["url"].as_str().unwrap_or_default().to_string();
    let token = url.rsplit_once("token=").map(|(_, t)| t.to_string()).expect("a token");
    case("idle", &c, &token, args.runs);
    let assets = idunno_ml::onnx::assets_dir();
    cli(&c, &["fs", "put", assets.join("models/tiny-add.onnx").to_str().unwrap(), "m.onnx"]);
    cli(&c, &["fs", "put", assets.join("datasets/tiny/x.npy").to_str().unwrap(), "x.npy"]);
    for (job, batch) in [("a", "8"), ("b", "64")] {
        cli(&c, &["job", "add", job, "--model", "m.onnx", "--inputs", "x.npy", "--batch-size", batch]);
        cli(&c, &["job", "start", job]);
    }
    std::thread::sleep(Duration::from_secs(15));
    case("two jobs running flat out", &c, &token, args.runs);
}
