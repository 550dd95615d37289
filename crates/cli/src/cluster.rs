//! `idunno up` and `idunno down`: a local cluster of node processes on
//! loopback, recorded in `DIR/cluster.json` so that clients, `down` and
//! tests can find it.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use idunno_rpc::v1;
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Args)]
pub struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u16,
    /// Folder for the cluster file and every node's data and log.
    #[arg(long, default_value = ".idunno")]
    dir: PathBuf,
    /// Node i listens on BASE+2(i-1) (RPC and SWIM) and the port after it (HTTP).
    #[arg(long, default_value_t = 8088)]
    base_port: u16,
    /// A node config file (TOML) passed to every node.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's name [default: the one this folder used before, else a
    /// new random one, so that two local clusters never merge].
    #[arg(long)]
    cluster: Option<String>,
    /// How long to wait for every node to see every other one.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// No cluster secret: plaintext on loopback (for measuring what the
    /// secret costs, and for showing what it hides).
    #[arg(long, hide = true)]
    insecure: bool,
}

impl UpArgs {
    /// A local cluster of `nodes` in `dir` from `base_port`, defaults
    /// otherwise (for `idunno demo`).
    pub fn local(nodes: u16, dir: PathBuf, base_port: u16) -> UpArgs {
        UpArgs { nodes, dir, base_port, config: None, cluster: None, wait_secs: 30, insecure: false }
    }
}

/// `DIR/cluster.json`: the contract of SPEC §10.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub dir: String,
    /// The cluster's name (nodes pass `--cluster` with it).
    #[serde(default)]
    pub cluster: String,
    pub nodes: Vec<ClusterNode>,
    /// The cluster secret's file (absolute): nodes were started with it,
    /// and clients that find the cluster here use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub rpc: String,
    pub http: String,
    pub pid: u32,
}

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> Result<Self, CliError> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::failed(format!("no cluster in {}: {e}", dir.display())))?;
        serde_json::from_str(&text).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
    }

    fn save(&self, dir: &Path) -> Result<(), CliError> {
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| CliError::failed(e.to_string()))?;
        std::fs::write(&tmp, text + "\n")
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
    }
}

/// Whether `pid` is a live (not zombie) idunno process. Guards against
/// signalling a pid the system has since given to someone else.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("idunno"))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn port_free(port: u16, udp_too: bool) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).is_ok() && (!udp_too || UdpSocket::bind(addr).is_ok())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

struct Spawned {
    node: ClusterNode,
    child: Child,
    log: PathBuf,
}

/// What every node of a local cluster is started with.
struct Common<'a> {
    exe: &'a Path,
    args: &'a UpArgs,
    cluster: &'a str,
    dir: &'a Path,
    /// `None`: an insecure cluster (`--insecure`).
    secret: Option<&'a Path>,
    accept: &'a [PathBuf],
}

fn spawn_node(c: &Common<'_>, i: u16) -> Result<Spawned, CliError> {
    let Common { exe, args, cluster, dir, .. } = *c;
    let rpc = args.base_port + 2 * (i - 1);
    let http = rpc + 1;
    let node_dir = dir.join(format!("n{i}"));
    std::fs::create_dir_all(&node_dir).map_err(|e| CliError::failed(format!("{}: {e}", node_dir.display())))?;
    let log = node_dir.join("node.log");
    let out = File::create(&log).map_err(|e| CliError::failed(format!("{}: {e}", log.display())))?;
    let err = out.try_clone().map_err(|e| CliError::failed(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(["--cluster", cluster])
        .args(["--id", &i.to_string()])
        .args(["--addr", &format!("127.0.0.1:{rpc}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(&node_dir);
    if i > 1 {
        cmd.args(["--join", &format!("127.0.0.1:{}", args.base_port)]);
    }
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(secret) = c.secret {
        cmd.arg("--secret-file").arg(secret);
    }
    for a in c.accept {
        cmd.arg("--accept-secret-file").arg(a);
    }
    // The flags above are the secret; an inherited variable must not differ.
    cmd.env_remove("IDUNNO_SECRET_FILE");
    // Its own process group: a Ctrl-C meant for `up` must not kill the cluster.
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let child = cmd.spawn().map_err(|e| CliError::failed(format!("cannot start {}: {e}", exe.display())))?;
    let node = ClusterNode {
        id: i as u64,
        rpc: format!("127.0.0.1:{rpc}"),
        http: format!("127.0.0.1:{http}"),
        pid: child.id(),
    };
    Ok(Spawned { node, child, log })
}

/// Wait until `check` holds for the node, failing early if it exits.
async fn wait_node(s: &mut Spawned, deadline: Instant, want_alive: u32) -> Result<(), CliError> {
    loop {
        if let Ok(Some(status)) = s.child.try_wait() {
            return Err(CliError::failed(format!(
                "node {} exited ({status}): {} (log: {})",
                s.node.id,
                log_tail(&s.log),
                s.log.display()
            )));
        }
        if let Ok(mut c) = target::connect_quick(&s.node.rpc).await
            && let Ok(r) = c.status(v1::StatusRequest {}).await
            && r.into_inner().members_alive >= want_alive
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "node {} did not see {want_alive} members alive in time (log: {})",
                s.node.id,
                s.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The name given, else the one kept in `dir/cluster.name`, else a new
/// random one (kept there for the next `up`).
fn cluster_name(dir: &Path, given: Option<&str>) -> Result<String, CliError> {
    let path = dir.join("cluster.name");
    let name = match given {
        Some(n) => n.to_string(),
        None => match std::fs::read_to_string(&path) {
            Ok(n) if !n.trim().is_empty() => n.trim().to_string(),
            _ => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                format!("local-{:08x}", h.finish() as u32)
            }
        },
    };
    std::fs::write(&path, format!("{name}\n")).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    Ok(name)
}

/// The secret file given, else `dir/secret` (made if missing), checked
/// and made absolute.
fn secret_file(dir: &Path, given: Option<&Path>) -> Result<PathBuf, CliError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dir.join("secret");
            if !p.exists() {
                let secret = idunno_auth::Secret::generate().map_err(|e| CliError::failed(e.to_string()))?;
                secret.write_new(&p).map_err(|e| CliError::failed(e.to_string()))?;
            }
            p
        }
    };
    idunno_auth::Keyring::read_file(&path).map_err(|e| CliError::bad_input(e.to_string()))?;
    std::fs::canonicalize(&path).map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
}

pub async fn up(args: UpArgs, secrets: &crate::secret::SecretArgs, out: Output) -> Result<(), CliError> {
    if args.nodes == 0 || args.nodes > 64 {
        return Err(CliError::bad_input(format!("--nodes {}: must be between 1 and 64", args.nodes)));
    }
    let last_port = args.base_port as u32 + 2 * args.nodes as u32 - 1;
    if args.base_port == 0 || last_port > 65535 {
        return Err(CliError::bad_input(format!(
            "--base-port {}: {} nodes need ports up to {last_port}",
            args.base_port, args.nodes
        )));
    }
    if let Some(c) = &args.config {
        idunno_node::NodeOptions::from_file(c).map_err(|e| CliError::bad_input(e.to_string()))?;
    }
    let dir = &args.dir;
    std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
    if let Ok(existing) = ClusterFile::load(dir) {
        let live: Vec<String> =
            existing.nodes.iter().filter(|n| is_running(n.pid)).map(|n| n.pid.to_string()).collect();
        if !live.is_empty() {
            return Err(CliError::failed(format!(
                "a cluster is already running in {} (pids {}); stop it with `idunno down --dir {}`",
                dir.display(),
                live.join(", "),
                dir.display()
            )));
        }
    }
    for i in 0..args.nodes {
        let rpc = args.base_port + 2 * i;
        for (port, udp) in [(rpc, true), (rpc + 1, false)] {
            if !port_free(port, udp) {
                return Err(CliError::failed(format!("port {port} is in use; pick another --base-port")));
            }
        }
    }
    let cluster = cluster_name(dir, args.cluster.as_deref())?;
    let secret = if args.insecure { None } else { Some(secret_file(dir, secrets.secret_file.as_deref())?) };
    let accept: Vec<PathBuf> = secrets
        .accept
        .iter()
        .map(|p| std::fs::canonicalize(p).map_err(|e| CliError::bad_input(format!("{}: {e}", p.display()))))
        .collect::<Result<_, _>>()?;
    // `up` itself asks the nodes how they are doing, as a client.
    match &secret {
        Some(s) => {
            crate::secret::SecretArgs { secret_file: Some(s.clone()), accept: accept.clone() }
                .install(idunno_auth::Role::Client)?;
        }
        None => idunno_net::use_keys(None),
    }
    let exe = std::env::current_exe().map_err(|e| CliError::failed(format!("cannot find own binary: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let common = Common { exe: &exe, args: &args, cluster: &cluster, dir, secret: secret.as_deref(), accept: &accept };

    let mut spawned = vec![spawn_node(&common, 1)?];
    let result = async {
        wait_node(&mut spawned[0], deadline, 1).await?;
        for i in 2..=args.nodes {
            spawned.push(spawn_node(&common, i)?);
        }
        let file = ClusterFile {
            dir: dir.display().to_string(),
            cluster: cluster.clone(),
            nodes: spawned.iter().map(|s| s.node.clone()).collect(),
            secret_file: secret.as_ref().map(|s| s.display().to_string()),
        };
        file.save(dir)?;
        for s in spawned.iter_mut() {
            wait_node(s, deadline, args.nodes as u32).await?;
        }
        Ok::<ClusterFile, CliError>(file)
    }
    .await;
    let file = match result {
        Ok(f) => f,
        Err(e) => {
            for s in spawned.iter_mut() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            let _ = std::fs::remove_file(ClusterFile::path(dir));
            return Err(e);
        }
    };
    if out.json {
        return out.json(&file);
    }
    let mut t = table(&["ID", "RPC", "HTTP", "PID"]);
    for n in &file.nodes {
        let scheme = if secret.is_some() { "https" } else { "http" };
        t.add_row(vec![n.id.to_string(), n.rpc.clone(), format!("{scheme}://{}/", n.http), n.pid.to_string()]);
    }
    println!("{t}");
    println!(
        "{} nodes up, every one sees all {}; state and logs in {}",
        file.nodes.len(),
        file.nodes.len(),
        dir.display()
    );
    match &secret {
        Some(s) => println!("cluster secret: {} (clients here find it; elsewhere pass --secret-file)", s.display()),
        None => println!("no cluster secret (--insecure): plaintext, loopback only"),
    }
    println!("try `idunno member list`, `idunno dashboard-url`; stop with `idunno down`");
    Ok(())
}

pub async fn down(dir: &Path, out: Output) -> Result<(), CliError> {
    let file = match ClusterFile::load(dir) {
        Ok(f) => f,
        Err(_) => {
            if out.json {
                return out.json(&serde_json::json!({ "stopped": [], "killed": [] }));
            }
            eprintln!("no cluster running in {}", dir.display());
            return Ok(());
        }
    };
    let live: Vec<&ClusterNode> = file.nodes.iter().filter(|n| is_running(n.pid)).collect();
    for n in &live {
        signal(n.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && live.iter().any(|n| is_running(n.pid)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut killed = Vec::new();
    for n in &live {
        if is_running(n.pid) {
            signal(n.pid, libc::SIGKILL);
            killed.push(n.id);
        }
    }
    let stopped: Vec<u64> = live.iter().map(|n| n.id).filter(|id| !killed.contains(id)).collect();
    let _ = std::fs::remove_file(ClusterFile::path(dir));
    if out.json {
        return out.json(&serde_json::json!({ "stopped": stopped, "killed": killed }));
    }
    println!(
        "stopped {} node(s){}",
        stopped.len(),
        if killed.is_empty() { String::new() } else { format!(", killed {} that did not stop in 10 s", killed.len()) }
    );
    Ok(())
}
