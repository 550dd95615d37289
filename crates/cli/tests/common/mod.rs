//! What the end-to-end tests share: the `idunno` binary under test, the
//! real-cluster kit, and client calls that go through the CLI itself.

#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

pub use idunno_testkit::{
    Cluster, alive, free_ports, http_get, http_token, https_get, kill9, secret_file, signal, wait_for,
};
use serde_json::Value;

/// The binary under test: this build's, or the one `IDUNNO_BIN` names
/// (to run the suite against another build, say the last release).
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("IDUNNO_BIN").map_or_else(|| env!("CARGO_BIN_EXE_idunno").into(), std::path::PathBuf::from)
    })
}

/// Make this test process's own gRPC clients (tests that call the
/// protocol directly) use the test clusters' secret, in `role`.
pub fn use_secret(role: idunno_auth::Role) {
    let ring = idunno_auth::Keyring::read(secret_file(), &[]).expect("test secret");
    let keys = match role {
        idunno_auth::Role::Node => idunno_auth::Keys::for_node(ring),
        idunno_auth::Role::Client => idunno_auth::Keys::for_client(ring),
    }
    .expect("keys");
    idunno_net::use_keys(Some(idunno_auth::KeysCell::new(keys)));
}

/// The assets (under the assets folder) and SDFS names of the tests that
/// run two jobs of different cost and a training side by side: EfficientNet-
/// Lite0 over the photos (with labels), the tiny model over 4096 rows, and
/// MNIST's training set.
pub const WORKLOAD: &[(&str, &str)] = &[
    ("models/efficientnet-lite0.onnx", "models/effnet.onnx"),
    ("datasets/photos/photos.npy", "data/photos.npy"),
    ("datasets/photos/photos-labels.npy", "data/photos-labels.npy"),
    ("models/tiny-add.onnx", "models/tiny.onnx"),
    ("datasets/tiny/x.npy", "data/x.npy"),
    ("datasets/mnist/train-images-idx3-ubyte", "mnist/train-images"),
    ("datasets/mnist/train-labels-idx1-ubyte", "mnist/train-labels"),
];

/// `job add` of the workload's photos job: EfficientNet-Lite0 over the
/// photos at batch 1, with labels, for `passes` passes.
pub fn photos_job(passes: u64) -> Vec<String> {
    let args = ["job", "add", "photos", "--model", "models/effnet.onnx", "--inputs", "data/photos.npy"];
    let more = ["--labels", "data/photos-labels.npy", "--batch-size", "1", "--passes"];
    args.iter().chain(&more).map(|a| a.to_string()).chain([passes.to_string()]).collect()
}

/// `job add` of the workload's tiny job: the tiny model over 4096 rows at
/// batch 64, for `passes` passes.
pub fn tiny_job(passes: u64) -> Vec<String> {
    let args = ["job", "add", "tiny", "--model", "models/tiny.onnx", "--inputs", "data/x.npy", "--batch-size", "64"];
    args.iter().map(|a| a.to_string()).chain(["--passes".to_string(), passes.to_string()]).collect()
}

/// The workload's training: a one-epoch MLP on MNIST over two workers,
/// checkpointed every 100 steps, in the background.
pub const TRAIN_MLP: &[&str] = &[
    "train",
    "mlp",
    "--arch",
    "mlp",
    "--inputs",
    "mnist/train-images",
    "--labels",
    "mnist/train-labels",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--workers",
    "2",
    "--checkpoint-every",
    "100",
    "--out",
    "models/mlp",
    "--detach",
];

/// Owned arguments as the `&str`s the runners take.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

pub fn up(n: u16) -> Cluster {
    Cluster::up(bin(), n, None)
}

pub fn run(args: &[&str], limit: Duration) -> Output {
    idunno_testkit::run(bin(), args, limit)
}

/// Run a client command that must succeed and print JSON.
pub fn json(args: &[&str]) -> Value {
    let out = run(args, Duration::from_secs(20));
    assert!(out.status.success(), "idunno {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("idunno {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `idunno ARGS --node ADDR` with the address of node `id`, killed (and
/// the test failed) if it runs past `limit`.
pub fn via(c: &Cluster, id: u64, args: &[&str], limit: Duration) -> Output {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--node", &c.node(id).rpc]);
    run(&full, limit)
}

/// [`via`] with `--json`: the command must succeed; its JSON.
pub fn json_via(c: &Cluster, id: u64, args: &[&str], limit: Duration) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.push("--json");
    let out = via(c, id, &full, limit);
    assert!(out.status.success(), "idunno {args:?} via node {id}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("idunno {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `member list --json` as node `id` sees it.
pub fn members(c: &Cluster, id: u64) -> Vec<Value> {
    json(&["member", "list", "--json", "--node", &c.node(id).rpc]).as_array().expect("array").clone()
}

/// (state, incarnation) that node `observer` gives `subject`, if it answers
/// and lists it.
pub fn state_of(c: &Cluster, observer: u64, subject: u64) -> Option<(String, u64)> {
    let out = run(&["member", "list", "--json", "--node", &c.node(observer).rpc], Duration::from_secs(10));
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(subject))
        .map(|m| (m["state"].as_str().unwrap_or("").to_string(), m["incarnation"].as_u64().unwrap_or(0)))
}

/// Node `id`'s `/metrics`, parsed.
pub fn scrape(c: &Cluster, id: u64, token: &str) -> prometheus_parse::Scrape {
    let (code, body) = https_get(bin(), &c.node(id).http, "/metrics", Some(token));
    assert_eq!(code, 200, "/metrics of node {id}: {body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text parses")
}

/// The value of `metric` whose labels include all of `labels`.
pub fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| {
        match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is {other:?}"),
        }
    })
}

/// Debian's chromium, when installed.
pub fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = std::process::Command::new("which").arg(name).output().ok()?;
        out.status.success().then(|| std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// The page's DOM after its script has run for a few seconds.
pub fn dump_dom(chromium: &std::path::Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=8000", "--dump-dom", url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("<main>"), "chromium printed no page: {}", String::from_utf8_lossy(&out.stderr));
    dom
}

/// The texts of the table cells of class `class`.
pub fn cells(dom: &str, class: &str) -> Vec<String> {
    let open = format!("<td class=\"{class}\">");
    dom.split(&open).skip(1).filter_map(|rest| rest.split("</td>").next()).map(str::to_string).collect()
}

/// The assets' virtualenv's python (NumPy and ONNX Runtime, for figures
/// to check ours against), or `None` with the reason printed when
/// `scripts/assets` has not built it.
pub fn numpy_python() -> Option<std::path::PathBuf> {
    let python = idunno_ml::onnx::assets_dir().join("venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    eprintln!("NOTE: skipped: {} is missing (scripts/assets builds it)", python.display());
    None
}

/// Run `tests/clients/numpy_stats.py` with these arguments: its JSON.
pub fn numpy_stats(python: &Path, args: &[&str]) -> Value {
    let script = format!("{}/tests/clients/numpy_stats.py", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python).arg(script).args(args).output().expect("run python");
    assert!(out.status.success(), "numpy_stats.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("numpy_stats.py prints JSON")
}
