//! Shared pieces of the benchmarks: finding the `idunno` binary, starting a
//! local cluster with it, and small statistics.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use idunno_rpc::v1;

/// The `idunno` binary built next to this benchmark (same target folder
/// and profile), or `$IDUNNO_BIN`.
pub fn idunno_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IDUNNO_BIN") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe folder").join("idunno")
}

#[derive(Clone, Debug)]
pub struct BenchNode {
    pub id: u64,
    pub rpc: String,
    pub http: String,
    pub pid: u32,
}

/// A cluster started with `idunno up`; `idunno down` on drop.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<BenchNode>,
    pub restarted: Vec<std::process::Child>,
}

impl LocalCluster {
    pub fn up(n: u16, base_port: u16, config: Option<&str>) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(idunno_bin());
        cmd.args(["up", "--nodes", &n.to_string(), "--base-port", &base_port.to_string(), "--json", "--dir"])
            .arg(dir.path());
        if let Some(text) = config {
            let p = dir.path().join("node.toml");
            std::fs::write(&p, text).expect("write config");
            cmd.arg("--config").arg(p);
        }
        let out = cmd.stderr(Stdio::inherit()).output().expect("run idunno up");
        assert!(out.status.success(), "idunno up failed");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let nodes = doc["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| BenchNode {
                id: n["id"].as_u64().unwrap(),
                rpc: n["rpc"].as_str().unwrap().into(),
                http: n["http"].as_str().unwrap().into(),
                pid: n["pid"].as_u64().unwrap() as u32,
            })
            .collect();
        LocalCluster { dir, nodes, restarted: Vec::new() }
    }

    /// Start node `id` again on its addresses and data folder, joining `via`.
    pub fn restart(&mut self, id: u64, via: &str, config: Option<&str>) -> u32 {
        let n = self.nodes.iter().find(|n| n.id == id).expect("node").clone();
        let data = self.dir.path().join(format!("n{id}"));
        let log = std::fs::File::create(data.join("restart.log")).expect("log");
        let mut cmd = Command::new(idunno_bin());
        cmd.args(["node", "--id", &id.to_string(), "--addr", &n.rpc, "--http", &n.http, "--join", via])
            .arg("--data-dir")
            .arg(&data);
        if config.is_some() {
            cmd.arg("--config").arg(self.dir.path().join("node.toml"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart");
        let pid = child.id();
        self.restarted.push(child);
        if let Some(slot) = self.nodes.iter_mut().find(|n| n.id == id) {
            slot.pid = pid;
        }
        pid
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new(idunno_bin())
            .args(["down", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for n in &self.nodes {
            kill9(n.pid);
        }
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn kill9(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Member states as `observer` sees them: id → (state name, incarnation).
pub async fn states(addr: &str) -> Option<Vec<(u64, &'static str, u64)>> {
    let mut c = idunno_rpc::connect(addr, Duration::from_millis(500)).await.ok()?;
    let r = c.members(v1::MembersRequest {}).await.ok()?.into_inner();
    Some(
        r.members
            .iter()
            .map(|m| (m.id, idunno_rpc::json::state_name(m.state()), m.incarnation))
            .collect(),
    )
}

pub async fn status(addr: &str) -> Option<v1::StatusReply> {
    let mut c = idunno_rpc::connect(addr, Duration::from_millis(1000)).await.ok()?;
    Some(c.status(v1::StatusRequest {}).await.ok()?.into_inner())
}

/// A base port with `count` free TCP+UDP ports after it.
pub fn free_base_port(count: u16) -> u16 {
    let mut base = 30_000 + (std::process::id() % 1000) as u16 * 20;
    loop {
        let ok = (base..base + count).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if ok {
            return base;
        }
        base += count;
    }
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
