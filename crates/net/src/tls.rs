//! TLS on a node's connections, with the process's keys from the cluster
//! secret (`idunno-auth`).
//!
//! A process sets its keys once at start-up ([`use_keys`]) and again after
//! a reload; every channel made afterwards connects over TLS 1.3 with
//! them. This is process-wide state on purpose: a process is one node or
//! one client and presents one identity on every connection it makes,
//! and threading the keys through every layer that opens a channel would
//! add nothing. (Simulated nodes, which share a process, run without a
//! secret.)
//!
//! Servers accept connections through [`accept_tls`]: handshakes run
//! concurrently (a slow or silent peer holds up only itself), bounded in
//! number and time; a failed handshake is counted and dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use idunno_auth::tls::ClientCredentials;
use idunno_auth::{KeysCell, Role};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

static KEYS: RwLock<Option<KeysCell>> = RwLock::new(None);

/// Make every later channel of this process use TLS with these keys
/// (`None`: plaintext, for a cluster without a secret).
pub fn use_keys(keys: Option<KeysCell>) {
    *KEYS.write().unwrap_or_else(|p| p.into_inner()) = keys;
}

/// The process's keys, if it has a secret.
pub fn keys() -> Option<KeysCell> {
    KEYS.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Who is on the other end of a served connection; tonic puts it in every
/// request's extensions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The connection is TLS (the node has a secret).
    pub secured: bool,
    /// The role its certificate proves; `None` when it presented none.
    pub role: Option<Role>,
}

/// A TCP stream read through a buffer: rustls reads at most 4 KiB per
/// call (a 16 KiB record takes four), so without one a bulk transfer
/// costs a system call per 4 KiB at every TLS hop; with it, one per
/// [`READ_BUFFER`]. Writes pass straight through.
pub type Buffered = BufReader<TcpStream>;

/// See [`Buffered`]. Every connection holds one (a node has a few per
/// peer), so it stays small: 16 times fewer reads than rustls alone.
pub const READ_BUFFER: usize = 64 << 10;

/// How long a peer may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// Connects to `http://HOST:PORT` over TLS with the process's keys, as of
/// each connection.
pub(crate) async fn connect_tls(
    uri: tonic::codegen::http::Uri,
) -> io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<Buffered>>> {
    let keys = keys().ok_or_else(|| io::Error::other("no cluster secret"))?.current();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(keys.client.config.clone());
    let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
    let tls = connector.connect(ClientCredentials::server_name(), tcp).await.map_err(|e| {
        // rustls says "invalid peer certificate: UnknownIssuer" when the
        // node holds another secret; say what that means.
        let text = e.to_string();
        if text.contains("UnknownIssuer") || text.contains("BadSignature") || text.contains("certificate") {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the node does not hold this cluster's secret (TLS certificate refused)",
            )
        } else if text.contains("alert") {
            io::Error::new(io::ErrorKind::PermissionDenied, "the node refused this secret (TLS handshake refused)")
        } else {
            e
        }
    })?;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

/// Accept TLS connections on `listener` with the server configuration
/// `config` gives at each connection. Connections whose handshake fails
/// or times out are counted in `refused` and dropped. The task ends when
/// the receiver is dropped.
pub fn accept_tls(
    listener: tokio::net::TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
    refused: Arc<AtomicU64>,
) -> tokio::sync::mpsc::Receiver<(TlsStream<Buffered>, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (tcp, from) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, go on.
                        tracing::debug!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let (tx, refused) = (tx.clone(), refused.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, from)).await;
                    }
                    Ok(Err(e)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%from, error = %e, "tls handshake refused");
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%from, "tls handshake timed out");
                    }
                }
            });
        }
    });
    rx
}
