//! The wire protocol (`proto/idunno/v1/*.proto`, compiled by tonic) and
//! the client side of it: connecting with a deadline and turning transport
//! failures into errors a person can act on.
//!
//! This crate knows nothing of what a node does; servers implement the
//! generated traits in the `node` crate.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Generated code for protocol version 1.
pub mod v1 {
    tonic::include_proto!("idunno.v1");
}

/// The Open Inference Protocol's gRPC form (package `inference`), for
/// stock clients such as tritonclient.grpc.
pub mod inference {
    tonic::include_proto!("inference");
}

pub mod auth;
pub mod json;
pub mod limits;

pub use limits::Limited;

pub use v1::coordinator_client::CoordinatorClient;
pub use v1::coordinator_server::{Coordinator, CoordinatorServer};
pub use v1::jobs_client::JobsClient;
pub use v1::jobs_server::{Jobs, JobsServer};
pub use v1::node_client::NodeClient;
pub use v1::node_server::{Node, NodeServer};
pub use v1::raft_client::RaftClient;
pub use v1::raft_server::{Raft, RaftServer};
pub use v1::sdfs_client::SdfsClient;
pub use v1::sdfs_server::{Sdfs, SdfsServer};

/// How long a client waits for a connection and for each call unless told
/// otherwise. Every call has a deadline: a hung peer never hangs a caller.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A call did not complete. Nothing is known to have changed on the remote
/// side unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The address is not a `host:port`.
    #[error("bad node address {addr:?}: expected HOST:PORT")]
    BadAddress { addr: String },
    /// No connection could be made: the node is down or not listening.
    #[error("cannot reach node at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The node answered with an error.
    #[error("{message}")]
    Remote { code: tonic::Code, message: String },
}

impl RpcError {
    /// Turn a failed call into an error. Transport failures become
    /// `Unreachable`; the node's own refusals stay `Remote`.
    pub fn from_status(addr: &str, status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                if status.metadata().is_empty() =>
            {
                RpcError::Unreachable { addr: addr.to_string(), reason: describe_status(&status) }
            }
            code => RpcError::Remote { code, message: status.message().to_string() },
        }
    }

    /// The caller's input was refused (exit code 2 in the CLI).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RpcError::BadAddress { .. }
                | RpcError::Remote {
                    code: tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::AlreadyExists
                        | tonic::Code::FailedPrecondition,
                    ..
                }
        )
    }
}

fn describe_status(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "no answer before the deadline".into(),
        _ => {
            let msg = status.message();
            if msg.is_empty() { "unavailable".into() } else { msg.to_string() }
        }
    }
}

/// The innermost cause of a transport error, which is the one that says
/// what went wrong ("Connection refused").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = cur.to_string();
    // io errors print "Connection refused (os error 111)"; keep the words.
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// Connect to the node at `addr` (`host:port`). Every later call on the
/// returned client fails after `timeout` if the node does not answer.
pub async fn connect(addr: &str, timeout: Duration) -> Result<NodeClient<Channel>, RpcError> {
    Ok(NodeClient::new(connect_channel(addr, timeout).await?).limited())
}

/// A connection to `addr` for any of the node's services; `timeout` bounds
/// connecting and every call.
pub async fn connect_channel(addr: &str, timeout: Duration) -> Result<Channel, RpcError> {
    connect_channel_with(addr, timeout, timeout).await
}

/// Like [`connect_channel`], with separate bounds for connecting and for
/// each call (calls that wait out an election need longer than a connect).
pub async fn connect_channel_with(addr: &str, timeout: Duration, call_timeout: Duration) -> Result<Channel, RpcError> {
    if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(RpcError::BadAddress { addr: addr.to_string() });
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| RpcError::BadAddress { addr: addr.to_string() })?
        .connect_timeout(timeout)
        .timeout(call_timeout)
        // Room for several 1 MiB file chunks in flight (SDFS transfers).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(idunno_net::MAX_FRAME)
        .tcp_nodelay(true);
    let channel = match tokio_timeout(timeout, idunno_net::connect(&endpoint)).await {
        Some(Ok(channel)) => channel,
        Some(Err(e)) => {
            return Err(RpcError::Unreachable { addr: addr.to_string(), reason: root_cause(&e) });
        }
        None => {
            return Err(RpcError::Unreachable {
                addr: addr.to_string(),
                reason: format!("no answer within {} ms", timeout.as_millis()),
            });
        }
    };
    Ok(channel)
}

async fn tokio_timeout<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    // tonic's connect_timeout covers TCP connect only; this covers the
    // HTTP/2 handshake with a peer that accepts and then says nothing.
    tokio::time::timeout(d, f).await.ok()
}
