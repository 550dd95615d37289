//! Sockets, gRPC channels and the wall clock, as every other crate gets
//! them: from the operating system, or — when the calling task runs inside
//! a turmoil simulation (`sim` feature) — from the simulated network and
//! clock, so the whole node's real code can run in a deterministic
//! whole-cluster simulation (`crates/sim`).
//!
//! The choice is made per call by asking turmoil whether the caller is in
//! a simulation, not by a global switch: a binary built with the feature
//! behaves exactly as one without it.

use std::io;
#[cfg(feature = "sim")]
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod tls;
pub use tls::{PeerInfo, keys, use_keys};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

/// Whether the caller runs on a simulated host.
pub fn simulated() -> bool {
    #[cfg(feature = "sim")]
    {
        turmoil::in_simulation()
    }
    #[cfg(not(feature = "sim"))]
    {
        false
    }
}

/// Milliseconds since the Unix epoch: the wall clock, or the simulated
/// host's clock in a simulation (which only moves as the simulation steps).
pub fn now_ms() -> u64 {
    #[cfg(feature = "sim")]
    if let Some(d) = turmoil::since_epoch() {
        return d.as_millis() as u64;
    }
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// In a simulation a host binds the unspecified address with its port;
/// its own address is turmoil's to give.
#[cfg(feature = "sim")]
fn sim_bind_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))
}

/// A bound UDP socket.
pub enum UdpSocket {
    Os(tokio::net::UdpSocket),
    #[cfg(feature = "sim")]
    Sim(turmoil::net::UdpSocket),
}

impl UdpSocket {
    pub async fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        #[cfg(feature = "sim")]
        if simulated() {
            return Ok(UdpSocket::Sim(turmoil::net::UdpSocket::bind(sim_bind_addr(addr)).await?));
        }
        Ok(UdpSocket::Os(tokio::net::UdpSocket::bind(addr).await?))
    }

    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            UdpSocket::Os(s) => s.send_to(buf, to).await,
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s) => s.send_to(buf, to).await,
        }
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            UdpSocket::Os(s) => s.recv_from(buf).await,
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s) => s.recv_from(buf).await,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            UdpSocket::Os(s) => s.local_addr(),
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s) => s.local_addr(),
        }
    }
}

/// A TCP listener for the node's gRPC server.
pub enum TcpListener {
    Os(tokio::net::TcpListener),
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpListener),
}

impl TcpListener {
    pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        #[cfg(feature = "sim")]
        if simulated() {
            return Ok(TcpListener::Sim(turmoil::net::TcpListener::bind(sim_bind_addr(addr)).await?));
        }
        Ok(TcpListener::Os(tokio::net::TcpListener::bind(addr).await?))
    }

    /// The operating system's listener, for servers (HTTP) that only run
    /// outside a simulation.
    pub fn into_os(self) -> Option<tokio::net::TcpListener> {
        match self {
            TcpListener::Os(l) => Some(l),
            #[cfg(feature = "sim")]
            TcpListener::Sim(_) => None,
        }
    }

    /// Accepted TLS connections with the role each peer proved, for
    /// `serve_with_incoming` (gRPC). Failed handshakes count in `refused`.
    /// A simulated listener stays plaintext (simulated nodes have no
    /// secret).
    pub fn incoming_tls(
        self,
        keys: idunno_auth::KeysCell,
        refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
        match self {
            TcpListener::Os(l) => {
                let config_keys = keys.clone();
                let config = move || match config_keys.current().server.as_ref() {
                    Some(s) => s.grpc.clone(),
                    // A node's keys always have server credentials; should they
                    // not, handshakes fail and nothing is served.
                    None => std::sync::Arc::new(idunno_auth::tls::unusable_server_config()),
                };
                let rx = tls::accept_tls(l, config, refused);
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(move |(tls, _)| {
                    let role =
                        keys.current().server.as_ref().and_then(|s| s.role_of(tls.get_ref().1.peer_certificates()));
                    Ok(Conn::Tls(Box::new(tls), role))
                }))
            }
            #[cfg(feature = "sim")]
            l @ TcpListener::Sim(_) => l.incoming(),
        }
    }

    /// Accepted connections, for `serve_with_incoming`. TCP_NODELAY is set
    /// on each: the protocol's small request/response messages would
    /// otherwise wait on Nagle's algorithm against delayed ACKs (~40 ms).
    pub fn incoming(self) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
        match self {
            TcpListener::Os(l) => Box::pin(tokio_stream::wrappers::TcpListenerStream::new(l).map(|c| {
                c.map(|s| {
                    let _ = s.set_nodelay(true);
                    Conn::Os(s)
                })
            })),
            #[cfg(feature = "sim")]
            TcpListener::Sim(l) => Box::pin(futures_accept(l)),
        }
    }
}

/// turmoil's listener has no stream adapter: a task accepts and hands the
/// connections over; it ends with the first accept after the server is gone.
#[cfg(feature = "sim")]
fn futures_accept(l: turmoil::net::TcpListener) -> impl Stream<Item = io::Result<Conn>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let conn = l.accept().await.map(|(s, _)| Conn::Sim(s));
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One accepted connection.
pub enum Conn {
    Os(tokio::net::TcpStream),
    /// TLS, with the role the peer's certificate proved.
    Tls(Box<tokio_rustls::server::TlsStream<tls::Buffered>>, Option<idunno_auth::Role>),
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpStream),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Tls(_, role) => PeerInfo { secured: true, role: *role },
            _ => PeerInfo::default(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Os(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "sim")]
            Conn::Sim(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Os(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "sim")]
            Conn::Sim(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Os(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "sim")]
            Conn::Sim(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Os(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "sim")]
            Conn::Sim(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How often an HTTP/2 connection is pinged, and how long a ping may go
/// unanswered before the connection is dropped. A peer that vanished
/// without closing its connections (power loss, a partition that drops
/// packets) would otherwise leave calls on them waiting for their own
/// deadlines, or for TCP's retransmission timeout (minutes) where they
/// have none; a new call then makes a new connection.
/// The largest HTTP/2 frame a node or client accepts (both ends advertise
/// it). HTTP/2's default, 16 KiB, cuts every 1 MiB SDFS chunk into 64
/// frames, and over TLS each frame's 9-byte header tends to become a TLS
/// record of its own: larger frames halve the records and their
/// encryption calls on bulk transfers.
pub const MAX_FRAME: u32 = 1 << 20;

pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

fn keepalive(endpoint: &Endpoint) -> Endpoint {
    endpoint
        .clone()
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(endpoint: &Endpoint) -> Channel {
    let endpoint = keepalive(endpoint);
    if tls::keys().is_some() {
        return endpoint.connect_with_connector_lazy(tower::service_fn(tls::connect_tls));
    }
    #[cfg(feature = "sim")]
    if simulated() {
        return endpoint.connect_with_connector_lazy(sim_connector());
    }
    endpoint.connect_lazy()
}

/// A channel connected now.
pub async fn connect(endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    let endpoint = keepalive(endpoint);
    if tls::keys().is_some() {
        return endpoint.connect_with_connector(tower::service_fn(tls::connect_tls)).await;
    }
    #[cfg(feature = "sim")]
    if simulated() {
        return endpoint.connect_with_connector(sim_connector()).await;
    }
    endpoint.connect().await
}

/// Connects to `http://IP:PORT` over the simulated network.
#[cfg(feature = "sim")]
fn sim_connector() -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<turmoil::net::TcpStream>,
    Error = io::Error,
    Future = impl Send,
> + Send
+ 'static {
    tower::service_fn(|uri: tonic::codegen::http::Uri| async move {
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(80);
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not an IP address: {host}")))?;
        let stream = turmoil::net::TcpStream::connect(SocketAddr::new(ip, port)).await?;
        Ok(hyper_util::rt::TokioIo::new(stream))
    })
}
