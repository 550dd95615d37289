//! Shared pieces of the benchmarks: finding the `idunno` binary, starting a
//! local cluster with it, and small statistics.

use std::path::PathBuf;
use std::time::Duration;

use idunno_rpc::v1;

/// The JSON API paths an open dashboard polls every second (events and
/// history with `?after=`, which these leave out).
pub const DASHBOARD_API: &[&str] =
    &["/api/status", "/api/members", "/api/jobs", "/api/files", "/api/serve", "/api/events", "/api/history"];

pub use idunno_testkit::{Cluster, kill9};

/// The `idunno` binary built next to this benchmark (same target folder
/// and profile), or `$IDUNNO_BIN`.
pub fn idunno_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IDUNNO_BIN") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe folder").join("idunno")
}

/// Make this process's own gRPC clients use the benchmark clusters'
/// secret (the testkit's), in `role`; `None`: plaintext, for clusters
/// started `--insecure`.
pub fn use_secret(role: Option<idunno_auth::Role>) {
    let keys = role.map(|role| {
        let ring = idunno_auth::Keyring::read_file(idunno_testkit::secret_file()).expect("bench secret");
        let keys = match role {
            idunno_auth::Role::Node => idunno_auth::Keys::for_node(ring),
            idunno_auth::Role::Client => idunno_auth::Keys::for_client(ring),
        };
        idunno_auth::KeysCell::new(keys.expect("keys"))
    });
    idunno_net::use_keys(keys);
}

/// `idunno` as a command, with the benchmark clusters' secret.
pub fn command() -> std::process::Command {
    let mut cmd = std::process::Command::new(idunno_bin());
    cmd.env("IDUNNO_SECRET_FILE", idunno_testkit::secret_file());
    cmd
}

/// `idunno ARGS --json` through node 1 of `c`; it must succeed.
pub fn cli_json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(1).rpc]);
    let out = idunno_testkit::run(&idunno_bin(), &full, Duration::from_secs(120));
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// One HTTPS GET of `path` with the token (curl, a new connection, the
/// certificate not checked: benchmarks measure cost, not trust); it must
/// answer 200.
pub fn https_get(http: &str, path: &str, token: &str) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://{http}{path}"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "GET {path}");
}

/// A cluster of the benchmarked binary.
pub fn cluster(n: u16, config: Option<&str>) -> Cluster {
    Cluster::up(&idunno_bin(), n, config)
}

/// A cluster of the benchmarked binary without a secret (`--insecure`:
/// plain HTTP and gRPC on loopback), each node with `config`.
pub fn cluster_insecure(n: u16, config: &str) -> Cluster {
    Cluster::up_with(&idunno_bin(), n, Some(config), &[("IDUNNO_SECRET_FILE", "")], &["--insecure"])
}

/// Member states as `observer` sees them: id → (state name, incarnation).
pub async fn states(addr: &str) -> Option<Vec<(u64, &'static str, u64)>> {
    let mut c = idunno_rpc::connect(addr, Duration::from_millis(500)).await.ok()?;
    let r = c.members(v1::MembersRequest {}).await.ok()?.into_inner();
    Some(r.members.iter().map(|m| (m.id, idunno_rpc::json::state_name(m.state()), m.incarnation)).collect())
}

pub async fn status(addr: &str) -> Option<v1::StatusReply> {
    let mut c = idunno_rpc::connect(addr, Duration::from_millis(1000)).await.ok()?;
    Some(c.status(v1::StatusRequest {}).await.ok()?.into_inner())
}

/// Median, mean, standard deviation and maximum, in seconds.
pub fn summary(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "no samples".into();
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    format!(
        "n={} median={:.2}s mean={:.2}s sd={:.2}s min={:.2}s worst={:.2}s",
        v.len(),
        median,
        mean,
        sd,
        v[0],
        v[v.len() - 1]
    )
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
}

/// Resident memory of a process in MiB (from /proc), if it runs.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
