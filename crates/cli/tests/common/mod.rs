//! Helpers for end-to-end tests: the real `idunno` binary, real processes
//! on loopback, random free ports, and cleanup of every process started.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idunno")
}

/// Run `idunno args…`, killing it if it runs past `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idunno");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "idunno {args:?} hung for more than {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a client command that must succeed and print JSON.
pub fn json(args: &[&str]) -> Value {
    let out = run(args, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "idunno {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("idunno {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn port_free(port: u16) -> bool {
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(a).is_ok() && UdpSocket::bind(a).is_ok()
}

/// A random base port with `count` free ports after it.
pub fn free_ports(count: u16) -> u16 {
    loop {
        let base = 20_000 + (rand_u32() % 20_000) as u16 * 2;
        if (base..base + count).all(port_free) {
            return base;
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    h.finish() as u32
}

pub fn kill9(pid: u32) {
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

/// A cluster started with `idunno up` in a temporary folder; stopped (and
/// every process killed) on drop, even when the test fails.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ClusterNode>,
    pub base_port: u16,
    /// Processes the test started itself (restarts).
    pub extra: Vec<Child>,
}

#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub id: u64,
    pub rpc: String,
    pub http: String,
    pub pid: u32,
}

impl Cluster {
    pub fn up(n: u16) -> Cluster {
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let base = free_ports(2 * n);
            let d = dir.path().to_str().unwrap().to_string();
            let out = run(
                &["up", "--nodes", &n.to_string(), "--dir", &d, "--base-port", &base.to_string(), "--json"],
                Duration::from_secs(60),
            );
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() {
                if stderr.contains("in use") {
                    continue; // another test took a port meanwhile
                }
                panic!("idunno up failed: {stderr}");
            }
            let doc: Value = serde_json::from_slice(&out.stdout).expect("up --json prints JSON");
            let file: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json")).unwrap()).unwrap();
            assert_eq!(doc, file, "up --json and cluster.json agree");
            let nodes = doc["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|n| ClusterNode {
                    id: n["id"].as_u64().expect("id"),
                    rpc: n["rpc"].as_str().expect("rpc").to_string(),
                    http: n["http"].as_str().expect("http").to_string(),
                    pid: n["pid"].as_u64().expect("pid") as u32,
                })
                .collect();
            return Cluster { dir, nodes, base_port: base, extra: Vec::new() };
        }
        panic!("could not find free ports for a cluster");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node(&self, id: u64) -> &ClusterNode {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// `member list --json` as node `id` sees it.
    pub fn members(&self, id: u64) -> Vec<Value> {
        let v = json(&["member", "list", "--json", "--node", &self.node(id).rpc]);
        v.as_array().expect("array").clone()
    }

    /// The state node `observer` gives `subject`, if it lists it.
    pub fn state_of(&self, observer: u64, subject: u64) -> Option<(String, u64)> {
        let out = run(&["member", "list", "--json", "--node", &self.node(observer).rpc], Duration::from_secs(10));
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().find(|m| m["id"].as_u64() == Some(subject)).map(|m| {
            (m["state"].as_str().unwrap_or("").to_string(), m["incarnation"].as_u64().unwrap_or(0))
        })
    }

    /// Start node `id` again by hand with its original addresses and data.
    pub fn restart(&mut self, id: u64) {
        let n = self.node(id).clone();
        let data = self.path().join(format!("n{id}"));
        let log = std::fs::File::create(data.join("restart.log")).expect("log");
        let child = Command::new(bin())
            .args(["node", "--id", &id.to_string(), "--addr", &n.rpc, "--http", &n.http])
            .arg("--data-dir")
            .arg(&data)
            .args(["--join", &self.node(1).rpc])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart node");
        self.extra.push(child);
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.path().join(format!("n{id}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.path().to_str().unwrap().to_string();
        let _ = Command::new(bin()).args(["down", "--dir", &d]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        for n in &self.nodes {
            if alive(n.pid) {
                kill9(n.pid);
            }
        }
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 50 ms until it returns true or `limit` passes; returns
/// how long it took.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A bare HTTP/1.1 GET on loopback (no client crate needed for tests).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read http");
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
