//! Real local clusters for end-to-end tests and benchmarks: the `idunno`
//! binary started as separate processes with `idunno up` on random free
//! loopback ports, killed with real signals, restarted on the same data,
//! and always cleaned up on drop, even when a test fails.
//!
//! This crate drives the binary from outside; it depends on no idunno crate.

pub mod alloc;
pub mod cgroup;
pub mod netns;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `bin args…`, killing it if it runs past `limit` (then panicking:
/// a command that hangs is a failure of its own). Its output is drained
/// as it comes: a child blocked on a full pipe would look hung.
pub fn run(bin: &Path, args: &[&str], limit: Duration) -> Output {
    run_with_env(bin, args, &[], limit)
}

/// The cluster secret of every cluster and every command this test
/// process starts (`IDUNNO_SECRET_FILE`): one per process, so commands
/// need not say which cluster they are for; clusters stay apart by name.
/// Removed when the process exits.
pub fn secret_file() -> &'static Path {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("idunno-test-{}.secret", std::process::id()));
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let _ = std::fs::remove_file(&path);
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("secret file");
        std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes()).expect("write secret");
        extern "C" fn remove() {
            let _ =
                std::fs::remove_file(std::env::temp_dir().join(format!("idunno-test-{}.secret", std::process::id())));
        }
        // SAFETY: atexit only records the function pointer.
        unsafe {
            libc::atexit(remove);
        }
        path
    })
}

/// [`run`] with extra environment variables (inherited by whatever the
/// command starts: `idunno up`'s nodes). `IDUNNO_SECRET_FILE` is
/// [`secret_file`] unless `env` says otherwise; an empty value removes it.
pub fn run_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    use std::io::Read;
    let mut cmd = Command::new(bin);
    cmd.env("IDUNNO_SECRET_FILE", secret_file());
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{} {args:?} hung for more than {limit:?}; stderr: {}",
                bin.display(),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

fn port_free(port: u16) -> bool {
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(a).is_ok() && UdpSocket::bind(a).is_ok()
}

/// The ports the kernel hands out to outgoing connections
/// (`ip_local_port_range`; Linux's default if unreadable).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A random base port with `count` free TCP+UDP ports from it on, below
/// the ephemeral range: a port from that range may be taken by any
/// process's outgoing connection between this check and the node's bind,
/// or before a killed node binds it again.
pub fn free_ports(count: u16) -> u16 {
    let (low, _) = ephemeral_ports();
    let top = if low > 12_000 + count { low - count } else { 60_000 };
    let span = ((top - 10_000) / 2).max(1) as u32;
    loop {
        let base = 10_000 + (random_u32() % span) as u16 * 2;
        if (base..base + count).all(port_free) {
            return base;
        }
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process: enough to spread tests.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

pub fn kill9(pid: u32) {
    signal(pid, libc::SIGKILL);
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether `pid` runs (a zombie does not count: an exited node whose
/// parent has not reaped it yet is dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

/// Poll `f` every 50 ms until it holds or `limit` passes; how long it took.
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

/// The secret's node authority (`idunno secret ca`) as `dir/ca.pem`.
fn write_ca(bin: &Path, dir: &Path) -> PathBuf {
    let ca = dir.join("ca.pem");
    let out = run(bin, &["secret", "ca"], Duration::from_secs(10));
    assert!(out.status.success(), "secret ca: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&ca, &out.stdout).expect("write ca");
    ca
}

/// A GET over HTTPS with the token of [`secret_file`]'s cluster (curl, with
/// the certificate checked against the secret's node authority): (status,
/// body). `token` None sends none.
pub fn https_get(bin: &Path, addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_ca(bin, dir.path());
    let port = addr.rsplit_once(':').map(|(_, p)| p).expect("host:port");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-w", "\n%{http_code}", "--cacert"]).arg(&ca);
    cmd.args(["--resolve", &format!("idunno-node:{port}:127.0.0.1")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("https://idunno-node:{port}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// An HTTP response as [`https_post`] got it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A POST over HTTPS (HTTP/1.1) like [`https_get`], with extra headers and
/// a body of any bytes; the whole response with its headers.
pub fn https_post(
    bin: &Path,
    addr: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_ca(bin, dir.path());
    let (data, head, got) = (dir.path().join("body"), dir.path().join("head"), dir.path().join("got"));
    std::fs::write(&data, body).expect("write body");
    let port = addr.rsplit_once(':').map(|(_, p)| p).expect("host:port");
    let mut cmd = Command::new("curl");
    // HTTP/1.1, as tritonclient's HTTP client speaks. (Over HTTP/2 a body
    // refused before it is all sent ends in a stream reset after the
    // answer, which curl reports as its error 92 instead of the answer.)
    cmd.args(["-sS", "--http1.1", "-m", "60", "--cacert"]).arg(&ca);
    cmd.args(["--resolve", &format!("idunno-node:{port}:127.0.0.1")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    for (n, v) in headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", data.display()));
    cmd.arg("-D").arg(&head).arg("-o").arg(&got);
    let out = cmd.arg(format!("https://idunno-node:{port}{path}")).output().expect("curl");
    assert!(out.status.success(), "curl POST {path}: {} {}", out.status, String::from_utf8_lossy(&out.stderr));
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    // The last response's headers (after any `100 Continue`).
    let last = head.split("\r\n\r\n").filter(|b| !b.trim().is_empty()).last().unwrap_or_default();
    let mut lines = last.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response { status, headers, body: std::fs::read(&got).unwrap_or_default() }
}

/// The HTTP token of node `addr`'s cluster, from `idunno dashboard-url`.
pub fn http_token(bin: &Path, addr: &str) -> String {
    let out = run(bin, &["dashboard-url", "--node", addr], Duration::from_secs(10));
    assert!(out.status.success(), "dashboard-url: {}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    url.rsplit_once("token=").map(|(_, t)| t.to_string()).unwrap_or_else(|| panic!("no token in {url}"))
}

/// A bare HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read http");
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub id: u64,
    pub rpc: String,
    pub http: String,
    pub pid: u32,
}

/// A cluster started with `idunno up` in a temporary folder.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ClusterNode>,
    pub base_port: u16,
    /// The node config file every node was started with, if any.
    config: Option<PathBuf>,
    /// The cluster's name (`idunno up` chose it).
    pub cluster: String,
    /// The cluster secret's file (`None`: an `--insecure` cluster).
    pub secret: Option<PathBuf>,
    /// Nodes restarted by hand (children of this process).
    restarted: Vec<Child>,
}

impl Cluster {
    /// `idunno up --nodes n`, optionally with a node config (TOML text).
    /// Retries on other ports if another process took one meanwhile.
    pub fn up(bin: &Path, n: u16, config: Option<&str>) -> Cluster {
        Cluster::up_with_env(bin, n, config, &[])
    }

    /// [`Cluster::up`] with extra environment variables for every node
    /// (test hooks such as `IDUNNO_TEST_PANIC_JOB`).
    pub fn up_with_env(bin: &Path, n: u16, config: Option<&str>, env: &[(&str, &str)]) -> Cluster {
        Cluster::up_with(bin, n, config, env, &[])
    }

    /// [`Cluster::up_with_env`] with extra arguments for `idunno up`
    /// (`--insecure`).
    pub fn up_with(bin: &Path, n: u16, config: Option<&str>, env: &[(&str, &str)], extra: &[&str]) -> Cluster {
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let base = free_ports(2 * n);
            let d = dir.path().to_str().expect("utf-8 path").to_string();
            let mut args = vec![
                "up".to_string(),
                "--nodes".into(),
                n.to_string(),
                "--dir".into(),
                d,
                "--base-port".into(),
                base.to_string(),
                "--json".into(),
            ];
            let config_path = config.map(|text| {
                let p = dir.path().join("node.toml");
                std::fs::write(&p, text).expect("write node config");
                p
            });
            if let Some(p) = &config_path {
                args.extend(["--config".to_string(), p.display().to_string()]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_with_env(bin, &argv, env, Duration::from_secs(60));
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() {
                if stderr.contains("in use") {
                    continue;
                }
                panic!("idunno up failed: {stderr}");
            }
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("up --json prints JSON");
            let file: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json")).expect("cluster.json"))
                    .expect("cluster.json is JSON");
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
            let cluster = doc["cluster"].as_str().expect("cluster name").to_string();
            return Cluster {
                secret: doc["secret_file"].as_str().map(PathBuf::from),
                cluster,
                bin: bin.to_path_buf(),
                dir,
                nodes,
                base_port: base,
                config: config_path,
                restarted: Vec::new(),
            };
        }
        panic!("could not find free ports for a cluster");
    }

    /// Stop every node gracefully (`idunno down`) and start the same
    /// cluster again from its data folders, on the same ports.
    pub fn restart_all(&mut self) {
        let d = self.path().display().to_string();
        let out = run(&self.bin, &["down", "--dir", &d], Duration::from_secs(30));
        assert!(out.status.success(), "down failed: {}", String::from_utf8_lossy(&out.stderr));
        let n = self.nodes.len().to_string();
        let base = self.base_port.to_string();
        let mut args = vec!["up", "--nodes", &n, "--dir", &d, "--base-port", &base, "--json"];
        let config = self.config.as_ref().map(|c| c.display().to_string());
        if let Some(c) = &config {
            args.extend(["--config", c]);
        }
        let out = run(&self.bin, &args, Duration::from_secs(60));
        assert!(out.status.success(), "up again failed: {}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("up --json prints JSON");
        for n in doc["nodes"].as_array().expect("nodes") {
            let id = n["id"].as_u64().expect("id");
            if let Some(slot) = self.nodes.iter_mut().find(|x| x.id == id) {
                slot.pid = n["pid"].as_u64().expect("pid") as u32;
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node(&self, id: u64) -> &ClusterNode {
        self.nodes.iter().find(|n| n.id == id).expect("no such node id")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.path().join(format!("n{id}"))
    }

    /// Start a new node (the next id, fresh ports and data folder) that
    /// joins the group through `via`; it is listed in `nodes`.
    pub fn add_node(&mut self, via: &str) -> ClusterNode {
        self.add_node_with(via, &[])
    }

    /// [`Cluster::add_node`] with extra flags for `idunno node`
    /// (`--slots 2`).
    pub fn add_node_with(&mut self, via: &str, extra: &[&str]) -> ClusterNode {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let base = free_ports(2);
        let node =
            ClusterNode { id, rpc: format!("127.0.0.1:{base}"), http: format!("127.0.0.1:{}", base + 1), pid: 0 };
        std::fs::create_dir_all(self.data_dir(id)).expect("data folder");
        self.nodes.push(node.clone());
        let pid = self.restart_with(id, via, extra);
        ClusterNode { pid, ..node }
    }

    /// Start node `id` again on its addresses and data folder, joining the
    /// group through `via`. Returns the new pid.
    pub fn restart(&mut self, id: u64, via: &str) -> u32 {
        self.restart_with(id, via, &[])
    }

    /// [`Cluster::restart`] with extra flags for `idunno node`.
    pub fn restart_with(&mut self, id: u64, via: &str, extra: &[&str]) -> u32 {
        let n = self.node(id).clone();
        let data = self.data_dir(id);
        let log = std::fs::File::create(data.join("restart.log")).expect("log");
        let mut cmd = Command::new(&self.bin);
        match &self.secret {
            Some(s) => cmd.env("IDUNNO_SECRET_FILE", s),
            None => cmd.env_remove("IDUNNO_SECRET_FILE"),
        };
        cmd.args(["node", "--cluster", &self.cluster, "--id", &id.to_string(), "--addr", &n.rpc, "--http", &n.http])
            .args(["--join", via])
            .arg("--data-dir")
            .arg(&data);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra);
        let child =
            cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("restart node");
        let pid = child.id();
        self.restarted.push(child);
        if let Some(slot) = self.nodes.iter_mut().find(|n| n.id == id) {
            slot.pid = pid;
        }
        pid
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["down", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for n in &self.nodes {
            if alive(n.pid) {
                kill9(n.pid);
            }
        }
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
