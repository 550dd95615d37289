//! Test hosts in network namespaces (root only): each node gets its own
//! namespace and address, wired through bridges in a hub namespace that
//! the test owns, so a test can cut the network between groups of nodes
//! and heal it. Nothing outside these namespaces is touched.
//!
//! Layout: hub namespace with bridges `br0` (the network) and `br1` (the
//! far side of a partition); node i lives in its own namespace at
//! `10.77.0.i/24` behind a veth pair whose hub end `hI` sits on a bridge.
//!
//! Names: every host's `/etc/hosts` (`/etc/netns/<ns>/hosts`, which `ip
//! netns exec` puts in place of the real one) names host i `node-i.idunno`,
//! plus whatever [`NetnsCluster::name`] adds, so nodes can be given seeds
//! by name. `tc netem` delay and loss can be set per host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why a namespace test cannot run here, or `None` if it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for network namespaces".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs the `ip` command (iproute2)".into()),
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct NetnsCluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    prefix: String,
    hub: String,
    pub n: u32,
    nodes: Vec<Option<Child>>,
    /// Extra names: name → hosts it resolves to.
    names: Vec<(String, Vec<u32>)>,
}

pub const PORT: u16 = 7000;

impl NetnsCluster {
    /// Make the namespaces and wires for `n` nodes (no node started yet).
    pub fn new(bin: &Path, n: u32) -> NetnsCluster {
        let prefix = format!("idn{}", std::process::id());
        let hub = format!("{prefix}-hub");
        let c = NetnsCluster {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().expect("tempdir"),
            prefix,
            hub: hub.clone(),
            n,
            nodes: (0..n).map(|_| None).collect(),
            names: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        for br in ["br0", "br1"] {
            ip(&["-n", &hub, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &hub, "link", "set", br, "up"]);
        }
        for i in 1..=n {
            let ns = c.ns(i);
            let h = format!("h{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &hub, "link", "add", &h, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &hub, "link", "set", &h, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &h, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", c.ip(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        c.write_hosts();
        c
    }

    /// Make `name` resolve, on every host, to the addresses of `hosts`
    /// (in that order): a round-robin DNS record, a headless Service.
    pub fn name(&mut self, name: &str, hosts: &[u32]) {
        self.names.push((name.to_string(), hosts.to_vec()));
        self.write_hosts();
    }

    fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for i in 1..=self.n {
            text += &format!("{} node-{i}.idunno\n", self.ip(i));
        }
        for (name, hosts) in &self.names {
            for h in hosts {
                text += &format!("{} {name}\n", self.ip(*h));
            }
        }
        for i in 1..=self.n {
            let dir = Path::new("/etc/netns").join(self.ns(i));
            std::fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
            std::fs::write(dir.join("hosts"), &text).expect("hosts file");
            // Every address of a name, not just the first.
            std::fs::write(dir.join("host.conf"), "multi on\n").expect("host.conf");
        }
    }

    /// Delay (and lose) what host `i` sends, with `tc netem`; e.g.
    /// `"delay 2ms 1ms loss 1%"`. An error says why it cannot (a kernel
    /// without the netem qdisc, no `tc`).
    pub fn netem(&self, i: u32, spec: &str) -> Result<(), String> {
        let ns = self.ns(i);
        let mut args = vec!["netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem"];
        args.extend(spec.split_whitespace());
        let out = Command::new("ip").args(&args).output().map_err(|e| format!("cannot run tc: {e}"))?;
        if !out.status.success() {
            return Err(format!("tc qdisc … netem {spec}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    pub fn ns(&self, i: u32) -> String {
        format!("{}-n{i}", self.prefix)
    }

    pub fn ip(&self, i: u32) -> String {
        format!("10.77.0.{i}")
    }

    pub fn addr(&self, i: u32) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Start node `i` in its namespace; every node but 1 joins node 1.
    pub fn start(&mut self, i: u32) {
        let join = self.addr(1);
        let extra: &[&str] = if i == 1 { &[] } else { &["--join", &join] };
        self.start_with(i, extra);
    }

    /// Start node `i` in its namespace with `extra` flags (its `--join`).
    /// Its log goes on after a restart on the same data folder.
    pub fn start_with(&mut self, i: u32, extra: &[&str]) {
        let data = self.dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("node.log")).expect("log");
        let mut cmd = Command::new("ip");
        cmd.env("IDUNNO_SECRET_FILE", crate::secret_file());
        cmd.args(["netns", "exec", &self.ns(i)]).arg(&self.bin).args(["node", "--id", &i.to_string()]);
        // Defaults for what `extra` does not say.
        if !extra.contains(&"--addr") {
            cmd.args(["--addr", &self.addr(i)]);
        }
        if !extra.contains(&"--http") {
            cmd.args(["--http", &format!("{}:{}", self.ip(i), PORT + 1)]);
        }
        cmd.arg("--data-dir").arg(&data).args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node in namespace");
        self.nodes[(i - 1) as usize] = Some(child);
    }

    /// Kill node `i` with SIGKILL (a crash) and reap it.
    pub fn kill(&mut self, i: u32) {
        if let Some(mut c) = self.nodes[(i - 1) as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `i`'s process is running.
    pub fn running(&mut self, i: u32) -> bool {
        self.nodes[(i - 1) as usize].as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Run `idunno args…` inside node `i`'s namespace against node `i`.
    pub fn cli(&self, i: u32, args: &[&str], limit: Duration) -> Output {
        let ns = self.ns(i);
        let mut full = vec!["netns", "exec", &ns];
        let bin = self.bin.display().to_string();
        full.push(&bin);
        full.extend_from_slice(args);
        let addr = self.addr(i);
        full.extend(["--node", &addr]);
        let mut child = Command::new("ip")
            .env("IDUNNO_SECRET_FILE", crate::secret_file())
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cli in namespace");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }

    /// `status --json` of node `i`, if it answers.
    pub fn status(&self, i: u32) -> Option<serde_json::Value> {
        let out = self.cli(i, &["status", "--json"], Duration::from_secs(10));
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Put `group` on the other side of a partition (or back with `heal`).
    pub fn partition(&self, group: &[u32]) {
        for i in group {
            ip(&["-n", &self.hub, "link", "set", &format!("h{i}"), "master", "br1"]);
        }
    }

    pub fn heal(&self) {
        for i in 1..=self.n {
            ip(&["-n", &self.hub, "link", "set", &format!("h{i}"), "master", "br0"]);
        }
    }

    pub fn log(&self, i: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{i}/node.log"))).unwrap_or_default()
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=self.n {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(self.ns(i)));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.hub]).output();
    }
}
