//! The cluster secret on the client side: `idunno secret new|ca`,
//! `idunno dashboard-url`, and which keys a client command uses — the
//! files given (`--secret-file`, `IDUNNO_SECRET_FILE`, and
//! `--accept-secret-file` during a rotation), else the secret of the
//! cluster in `./.idunno/cluster.json`, else none (a loopback cluster
//! without a secret).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use idunno_auth::{Keyring, Keys, KeysCell, Role, Secret};
use idunno_rpc::{RpcError, v1};

use crate::cluster::ClusterFile;
use crate::error::CliError;
use crate::output::Output;
use crate::target;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Write a new cluster secret (32 random bytes as 64 hex characters, mode 0600) to FILE.
    New { file: PathBuf },
    /// Print the certificate of the secret's node authority (PEM), for curl's
    /// --cacert or a browser's trust store.
    Ca,
    /// The key ids in a secret file, the primary first.
    List { file: PathBuf },
    /// Rotation, step 1: add a new secret to FILE as an accepted key.
    Add { file: PathBuf },
    /// Rotation, step 2: make the secret KEY_ID the primary one in FILE.
    Use { file: PathBuf, key_id: String },
    /// Rotation, step 3: remove the secret KEY_ID (not the primary) from FILE.
    Remove { file: PathBuf, key_id: String },
}

fn read_ring(file: &Path) -> Result<Keyring, CliError> {
    Keyring::read_file(file).map_err(|e| CliError::bad_input(e.to_string()))
}

fn write_ring(ring: &Keyring, file: &Path) -> Result<(), CliError> {
    ring.write(file).map_err(|e| CliError::failed(e.to_string()))
}

fn print_ring(ring: &Keyring, file: &Path, out: Output) -> Result<(), CliError> {
    let rows: Vec<serde_json::Value> = ring
        .all()
        .enumerate()
        .map(|(i, s)| serde_json::json!({ "key_id": s.key_id_hex(), "primary": i == 0 }))
        .collect();
    if out.json {
        return out.json(&rows);
    }
    for (i, s) in ring.all().enumerate() {
        println!("{}  {}", s.key_id_hex(), if i == 0 { "primary" } else { "accepted" });
    }
    println!("({}; nodes read it again on SIGHUP)", file.display());
    Ok(())
}

/// The secret named by `key_id` in `ring`, or a clear refusal.
fn named<'a>(ring: &'a Keyring, key_id: &str, file: &Path) -> Result<&'a Secret, CliError> {
    ring.find(key_id).ok_or_else(|| CliError::bad_input(format!("{}: no key with id {key_id:?}", file.display())))
}

/// The secret files a client command was given.
#[derive(Clone, Debug, Default)]
pub struct SecretArgs {
    pub secret_file: Option<PathBuf>,
    pub accept: Vec<PathBuf>,
}

impl SecretArgs {
    /// The keyring to use: the files given, else the local cluster's.
    pub fn keyring(&self) -> Result<Option<Keyring>, CliError> {
        let primary = match &self.secret_file {
            Some(p) => Some(p.clone()),
            None => ClusterFile::load(Path::new(".idunno")).ok().and_then(|f| f.secret_file.map(PathBuf::from)),
        };
        let Some(primary) = primary else {
            if !self.accept.is_empty() {
                return Err(CliError::bad_input(
                    "--accept-secret-file needs --secret-file: which secret is the primary one?",
                ));
            }
            return Ok(None);
        };
        Keyring::read(&primary, &self.accept).map(Some).map_err(|e| CliError::bad_input(e.to_string()))
    }

    /// Make every connection of this process use the keyring, in `role`.
    pub fn install(&self, role: Role) -> Result<Option<Keyring>, CliError> {
        let Some(ring) = self.keyring()? else {
            return Ok(None);
        };
        let keys = match role {
            Role::Node => Keys::for_node(ring.clone()),
            Role::Client => Keys::for_client(ring.clone()),
        }
        .map_err(|e| CliError::failed(e.to_string()))?;
        idunno_net::use_keys(Some(KeysCell::new(keys)));
        Ok(Some(ring))
    }
}

pub async fn run(cmd: SecretCommand, secrets: &SecretArgs, out: Output) -> Result<(), CliError> {
    match cmd {
        SecretCommand::New { file } => {
            let secret = Secret::generate().map_err(|e| CliError::failed(e.to_string()))?;
            secret.write_new(&file).map_err(|e| match e {
                idunno_auth::SecretError::Exists { .. } => CliError::bad_input(e.to_string()),
                e => CliError::failed(e.to_string()),
            })?;
            if out.json {
                return out
                    .json(&serde_json::json!({ "file": file.display().to_string(), "key_id": secret.key_id_hex() }));
            }
            println!("wrote a new cluster secret to {} (key id {})", file.display(), secret.key_id_hex());
            println!("give it to every node and client: --secret-file {} (or IDUNNO_SECRET_FILE)", file.display());
            Ok(())
        }
        SecretCommand::List { file } => print_ring(&read_ring(&file)?, &file, out),
        SecretCommand::Add { file } => {
            let mut ring = read_ring(&file)?;
            ring.accepted.push(Secret::generate().map_err(|e| CliError::failed(e.to_string()))?);
            write_ring(&ring, &file)?;
            print_ring(&ring, &file, out)
        }
        SecretCommand::Use { file, key_id } => {
            let ring = read_ring(&file)?;
            let primary = named(&ring, &key_id, &file)?.clone();
            let accepted = ring.all().filter(|s| **s != primary).cloned().collect();
            let ring = Keyring { primary, accepted };
            write_ring(&ring, &file)?;
            print_ring(&ring, &file, out)
        }
        SecretCommand::Remove { file, key_id } => {
            let mut ring = read_ring(&file)?;
            let gone = named(&ring, &key_id, &file)?.clone();
            if gone == ring.primary {
                return Err(CliError::bad_input(format!(
                    "{key_id} is the primary key of {}: make another key primary first (`idunno secret use`)",
                    file.display()
                )));
            }
            ring.accepted.retain(|s| *s != gone);
            write_ring(&ring, &file)?;
            print_ring(&ring, &file, out)
        }
        SecretCommand::Ca => {
            let Some(ring) = secrets.keyring()? else {
                return Err(CliError::bad_input("no cluster secret: pass --secret-file FILE"));
            };
            let pem = idunno_auth::tls::node_ca_pem(&ring).map_err(|e| CliError::failed(e.to_string()))?;
            if out.json {
                return out.json(&serde_json::json!({ "pem": pem }));
            }
            print!("{pem}");
            Ok(())
        }
    }
}

/// `idunno dashboard-url`: the answering node's HTTP address, with the
/// login token when the cluster has a secret.
pub async fn dashboard_url(node: Option<String>, ring: Option<&Keyring>, out: Output) -> Result<(), CliError> {
    let (addr, mut client) = target::connect(node).await?;
    let status = client.status(v1::StatusRequest {}).await.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
    // A node listening on every interface names the address the client
    // reached it by instead.
    let http = match status.http.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            format!("{host}:{}", a.port())
        }
        _ => status.http.clone(),
    };
    let url = match ring {
        Some(ring) => format!("https://{http}/?token={}", idunno_auth::TokenCheck::new(ring).primary()),
        None => format!("http://{http}/"),
    };
    if out.json {
        return out.json(&serde_json::json!({ "url": url }));
    }
    println!("{url}");
    Ok(())
}
