//! A node's configuration: an optional TOML file, overridden field by field
//! by command-line flags, resolved into one checked [`NodeConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use idunno_coordinator::RaftSettings;
use idunno_membership::{NodeId, SwimConfig};
use serde::Deserialize;

/// The default RPC address: what clients try when told nothing.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8088";

/// Everything a node can be told, all optional. The same struct is read
/// from the TOML file and filled from flags; flags win.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// The cluster's name: nodes of different clusters ignore each other's
    /// membership and Raft traffic. Default "idunno".
    pub cluster: Option<String>,
    /// Stable node id; generated and kept in the data folder if absent.
    pub id: Option<u64>,
    /// RPC (TCP) and SWIM (UDP) address.
    pub addr: Option<String>,
    /// HTTP dashboard and JSON API address. Default: RPC port + 1000.
    pub http: Option<String>,
    /// Where the node keeps its state.
    pub data_dir: Option<PathBuf>,
    /// Where to join the group: `HOST:PORT` entries (one string or a
    /// list); a host may be a DNS name with several addresses.
    pub join: Option<Seeds>,
    /// Give up joining after this many milliseconds and exit; without it
    /// the node keeps trying until a seed answers.
    pub join_timeout_ms: Option<u64>,
    /// The node that founds the group: the one whose `advertise` (or
    /// `addr`) is this `HOST:PORT` starts a new group when it has no state,
    /// even though it is given seeds; every other node joins. Lets every
    /// node of a deployment get the same flags (a Kubernetes StatefulSet).
    pub founder: Option<String>,
    /// The address other nodes reach this one at, when it is not `addr`
    /// (NAT, containers, `addr` = 0.0.0.0:PORT). A name is resolved at
    /// start.
    pub advertise: Option<String>,
    /// Fraction of outgoing SWIM datagrams to drop (loss injection for
    /// benchmarks and tests; 0 in production).
    pub udp_loss: Option<f64>,
    /// Target size of the coordinator group (Raft voters). Default 7.
    pub voters: Option<usize>,
    /// Copies of every SDFS file (overrides `sdfs.replicas`).
    pub replicas: Option<usize>,
    pub sdfs: Option<idunno_sdfs::SdfsConfig>,
    pub swim: Option<SwimConfig>,
    pub raft: Option<RaftSettings>,
    /// How this node runs queries (`[worker]`: slots, threads, …).
    pub worker: Option<idunno_jobs::WorkerConfig>,
    /// The cluster secret (64 hex characters; `idunno secret new FILE`).
    /// Without one the node listens on loopback only.
    pub secret_file: Option<PathBuf>,
    /// Secrets accepted beside the primary one while keys rotate.
    pub accept_secret_files: Option<Vec<PathBuf>>,
    /// An operator's certificate for the HTTPS server (`[tls]`).
    pub tls: Option<TlsFiles>,
    /// Serve `/metrics` without the token (with a cluster secret; still
    /// over HTTPS), for a Prometheus that cannot send one. Default false.
    pub metrics_public: Option<bool>,
    /// Speak this wire protocol instead of this build's: for tests of
    /// mixed versions only.
    pub wire_protocol: Option<u8>,
}

/// `[tls]`: a certificate chain and key (PEM) the node's HTTPS server
/// presents instead of the one derived from the secret, e.g. one a
/// browser trusts. Read again on SIGHUP, so a renewed certificate needs no
/// restart. gRPC keeps the derived certificates (they carry the roles).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsFiles {
    pub fn read(&self) -> Result<idunno_auth::tls::OperatorCert, idunno_auth::tls::TlsError> {
        idunno_auth::tls::OperatorCert::read(&self.cert_file, &self.key_file)
    }
}

impl NodeOptions {
    /// Read a TOML config file. Unknown keys are errors, not silently
    /// ignored: a typo must not quietly change nothing.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let at =
                e.span().map(|s| format!(" at line {}", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
            ConfigError::Invalid(format!("config file {}{at}: {msg}", path.display()))
        })
    }

    /// `self` with every field set in `flags` replaced.
    pub fn overridden_by(self, flags: NodeOptions) -> NodeOptions {
        NodeOptions {
            cluster: flags.cluster.or(self.cluster),
            id: flags.id.or(self.id),
            addr: flags.addr.or(self.addr),
            http: flags.http.or(self.http),
            data_dir: flags.data_dir.or(self.data_dir),
            join: flags.join.or(self.join),
            join_timeout_ms: flags.join_timeout_ms.or(self.join_timeout_ms),
            advertise: flags.advertise.or(self.advertise),
            founder: flags.founder.or(self.founder),
            udp_loss: flags.udp_loss.or(self.udp_loss),
            voters: flags.voters.or(self.voters),
            replicas: flags.replicas.or(self.replicas),
            sdfs: flags.sdfs.or(self.sdfs),
            swim: flags.swim.or(self.swim),
            raft: flags.raft.or(self.raft),
            worker: flags.worker.or(self.worker),
            secret_file: flags.secret_file.or(self.secret_file),
            accept_secret_files: flags.accept_secret_files.or(self.accept_secret_files),
            tls: flags.tls.or(self.tls),
            metrics_public: flags.metrics_public.or(self.metrics_public),
            wire_protocol: flags.wire_protocol.or(self.wire_protocol),
        }
    }
}

/// `join` in a config file: one `"HOST:PORT"` or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Seeds {
    One(String),
    Many(Vec<String>),
}

impl Seeds {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Seeds::One(s) => vec![s],
            Seeds::Many(v) => v,
        }
    }
}

/// A configuration that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub cluster: String,
    pub id: Option<NodeId>,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// The seeds, kept as text: they are resolved on every join round, so
    /// a name that resolves later still works. Empty: found the group.
    pub join: Vec<String>,
    /// `None`: keep trying to join until a seed answers.
    pub join_timeout: Option<Duration>,
    /// This node founds the group if it has no state: no seeds, or it is
    /// the `founder`.
    pub founds: bool,
    /// Where other nodes reach this one (`addr` unless `--advertise`): the
    /// address in its identity, its Raft entry and its SDFS replicas.
    pub advertise: SocketAddr,
    pub udp_loss: f64,
    pub voters: usize,
    pub sdfs: idunno_sdfs::SdfsConfig,
    pub swim: SwimConfig,
    pub raft: RaftSettings,
    pub worker: idunno_jobs::WorkerConfig,
    /// Where the keyring comes from, read again on SIGHUP; `None`: no
    /// secret (loopback only).
    pub secret: Option<SecretFiles>,
    /// An operator's HTTPS certificate (needs a secret).
    pub tls: Option<TlsFiles>,
    /// `/metrics` needs no token.
    pub metrics_public: bool,
    /// `None`: this build's protocol.
    pub wire_protocol: Option<u8>,
}

/// The files of a node's keyring.
#[derive(Clone, Debug)]
pub struct SecretFiles {
    pub primary: PathBuf,
    pub accepted: Vec<PathBuf>,
}

impl SecretFiles {
    pub fn read(&self) -> Result<idunno_auth::Keyring, idunno_auth::SecretError> {
        idunno_auth::Keyring::read(&self.primary, &self.accepted)
    }
}

/// Parse `host:port`, resolving a host name.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ConfigError::Invalid(format!("{what}: {s:?} is not a HOST:PORT address")))
}

impl NodeConfig {
    pub fn resolve(opts: NodeOptions) -> Result<Self, ConfigError> {
        let addr = parse_addr("addr", opts.addr.as_deref().unwrap_or(DEFAULT_ADDR))?;
        if addr.port() == 0 {
            return Err(ConfigError::Invalid(
                "addr: port 0 is not allowed; members must know each other's port".into(),
            ));
        }
        let http = match opts.http.as_deref() {
            Some(h) => parse_addr("http", h)?,
            None => {
                let port = addr.port().checked_add(1000).ok_or_else(|| {
                    ConfigError::Invalid(format!("http: no default for RPC port {}; pass --http", addr.port()))
                })?;
                SocketAddr::new(addr.ip(), port)
            }
        };
        if http == addr {
            return Err(ConfigError::Invalid(format!("http: {http} is the RPC address too")));
        }
        let data_dir = opts.data_dir.unwrap_or_else(|| PathBuf::from(format!(".idunno/node-{}", addr.port())));
        let join = opts.join.map(Seeds::into_vec).unwrap_or_default();
        crate::join::check_entries(&join).map_err(ConfigError::Invalid)?;
        if let Some(f) = &opts.founder {
            crate::join::check_entry(f).map_err(|e| ConfigError::Invalid(e.replace("join:", "founder:")))?;
        }
        let founds = join.is_empty()
            || opts.founder.as_deref().is_some_and(|f| Some(f) == opts.advertise.as_deref().or(opts.addr.as_deref()));
        let advertise = match opts.advertise.as_deref() {
            Some(a) => {
                let adv = parse_addr("advertise", a)?;
                if adv.ip().is_unspecified() || adv.port() == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "advertise: {a:?} must be an address other nodes can reach, with a port"
                    )));
                }
                Some(adv)
            }
            None => None,
        };
        let udp_loss = opts.udp_loss.unwrap_or(0.0);
        if !(0.0..1.0).contains(&udp_loss) {
            return Err(ConfigError::Invalid(format!("udp_loss: {udp_loss} is not in [0, 1)")));
        }
        let voters = opts.voters.unwrap_or(7);
        if voters == 0 {
            return Err(ConfigError::Invalid("voters: the coordinator group needs at least 1 voter".into()));
        }
        let mut sdfs = opts.sdfs.unwrap_or_default();
        if let Some(r) = opts.replicas {
            sdfs.replicas = r;
        }
        sdfs.validate().map_err(ConfigError::Invalid)?;
        let raft = opts.raft.unwrap_or_default();
        idunno_coordinator::raft::openraft_config(&raft).map_err(|e| ConfigError::Invalid(format!("raft: {e}")))?;
        let swim = opts.swim.unwrap_or_default();
        swim.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let worker = opts.worker.unwrap_or_default();
        worker.validate().map_err(ConfigError::Invalid)?;
        let cluster = opts.cluster.unwrap_or_else(|| "idunno".into());
        if cluster.is_empty() || cluster.len() > 64 || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid(format!("cluster: {cluster:?} must be 1 to 64 visible ASCII characters")));
        }
        let secret = match opts.secret_file {
            Some(primary) => Some(SecretFiles { primary, accepted: opts.accept_secret_files.unwrap_or_default() }),
            None if opts.accept_secret_files.as_ref().is_some_and(|a| !a.is_empty()) => {
                return Err(ConfigError::Invalid(
                    "accept_secret_files needs secret_file: which secret is the primary one?".into(),
                ));
            }
            None => None,
        };
        if let Some(tls) = &opts.tls {
            if secret.is_none() {
                return Err(ConfigError::Invalid(
                    "[tls] needs a cluster secret (secret_file): without one the node serves plain HTTP on loopback"
                        .into(),
                ));
            }
            tls.read().map_err(|e| ConfigError::Invalid(format!("[tls] {e}")))?;
        }
        if let Some(files) = &secret {
            files.read().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        } else if !idunno_net::simulated() {
            // (A simulated network is no network: its hosts need no secret.)
            for (what, a) in [("addr", Some(addr)), ("http", Some(http)), ("advertise", advertise)] {
                let Some(a) = a else { continue };
                if !a.ip().is_loopback() {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: {a} is not a loopback address, and without a cluster secret a node listens on \
                         loopback only. Make a secret with `idunno secret new FILE` and give it to every node \
                         and client with --secret-file FILE (or IDUNNO_SECRET_FILE)"
                    )));
                }
            }
        }
        let advertise = match advertise {
            Some(a) => a,
            None if addr.ip().is_unspecified() => {
                return Err(ConfigError::Invalid(format!(
                    "addr: {addr} listens on every interface; say which address other nodes reach this one at \
                     with --advertise HOST:PORT"
                )));
            }
            None => addr,
        };
        Ok(NodeConfig {
            tls: opts.tls,
            metrics_public: opts.metrics_public.unwrap_or(false),
            wire_protocol: opts.wire_protocol,
            secret,
            cluster,
            id: opts.id.map(NodeId),
            addr,
            http,
            data_dir,
            join,
            founds,
            join_timeout: opts.join_timeout_ms.map(Duration::from_millis),
            advertise,
            udp_loss,
            voters,
            sdfs,
            swim,
            raft,
            worker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn file_then_flags() {
        let (_d, p) = write("addr = \"127.0.0.1:9000\"\nid = 4\n[swim]\nprobe_period_ms = 500\n");
        let file = NodeOptions::from_file(&p).unwrap();
        let flags = NodeOptions { id: Some(7), ..Default::default() };
        let c = NodeConfig::resolve(file.overridden_by(flags)).unwrap();
        assert_eq!(c.addr.port(), 9000);
        assert_eq!(c.http.port(), 10000);
        assert_eq!(c.id, Some(NodeId(7)));
        assert_eq!(c.swim.probe_period_ms, 500);
        assert_eq!(c.swim.probe_rtt_ms, SwimConfig::default().probe_rtt_ms);
    }

    #[test]
    fn malformed_and_unknown_keys_are_errors_with_a_line() {
        let (_d, p) = write("addr = \"127.0.0.1:9000\"\nprobe = 3\n");
        let e = NodeOptions::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("probe"), "{e}");
        let (_d2, p2) = write("addr = [\n");
        let e = NodeOptions::from_file(&p2).unwrap_err().to_string();
        assert!(e.contains("node.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = NodeConfig::resolve(NodeOptions { addr: Some("nowhere".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("addr") && e.contains("nowhere"), "{e}");
        let e = NodeConfig::resolve(NodeOptions { udp_loss: Some(1.5), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("udp_loss"), "{e}");
    }

    #[test]
    fn join_takes_one_or_many_seeds_by_name_checked_by_form() {
        let (_d, p) = write("join = \"seeds.example:7000\"\n");
        let c = NodeConfig::resolve(NodeOptions::from_file(&p).unwrap()).unwrap();
        assert_eq!(c.join, vec!["seeds.example:7000"]);
        assert_eq!(c.join_timeout, None, "keeps trying by default");
        let (_d, p) = write("join = [\"a.example:7000\", \"10.0.0.2:7000\"]\njoin_timeout_ms = 900\n");
        let c = NodeConfig::resolve(NodeOptions::from_file(&p).unwrap()).unwrap();
        assert_eq!(c.join.len(), 2);
        assert_eq!(c.join_timeout, Some(Duration::from_millis(900)));
        let e =
            NodeConfig::resolve(NodeOptions { join: Some(Seeds::One("seeds.example".into())), ..Default::default() })
                .unwrap_err()
                .to_string();
        assert!(e.contains("join") && e.contains("seeds.example") && e.contains("no port"), "{e}");
    }

    #[test]
    fn the_founder_founds_though_given_seeds_and_no_one_else_does() {
        let opts = |advertise: &str| NodeOptions {
            addr: Some("127.0.0.1:9100".into()),
            advertise: Some(advertise.into()),
            join: Some(Seeds::One("localhost:9100".into())),
            founder: Some("localhost:9100".into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(opts("localhost:9100")).unwrap().founds);
        assert!(!NodeConfig::resolve(opts("127.0.0.1:9100")).unwrap().founds, "compared as given, not resolved");
        assert!(NodeConfig::resolve(NodeOptions::default()).unwrap().founds, "no seeds: founds");
    }

    #[test]
    fn advertise_is_where_others_reach_the_node() {
        let c = NodeConfig::resolve(NodeOptions::default()).unwrap();
        assert_eq!(c.advertise, c.addr);
        let c = NodeConfig::resolve(NodeOptions {
            addr: Some("127.0.0.1:9100".into()),
            advertise: Some("127.0.0.2:9100".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.advertise.to_string(), "127.0.0.2:9100");
        let e = NodeConfig::resolve(NodeOptions { advertise: Some("0.0.0.0:9100".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("advertise"), "{e}");
    }
}
