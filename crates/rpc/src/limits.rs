//! Every bound on what crosses the wire, in one place, the same for every
//! client and every server: how large one message may be, how long a
//! call may take, how long a stream may stay silent.
//!
//! - **Messages** ([`MAX_MESSAGE`]): every generated client and server is
//!   made through [`Limited::limited`], so both ends agree. Bulk data
//!   (file contents, snapshot chunks) travels as bytes in messages far
//!   below it (1 MiB file chunks; openraft's snapshot chunks).
//! - **Unary calls** are answered within [`UNARY_DEADLINE`] or get
//!   DEADLINE_EXCEEDED ([`DeadlineLayer`], on every node's server).
//! - **Bulk calls** (uploads, blob copies: [`BY_PROGRESS`]) may take as
//!   long as they keep moving: each message must come within
//!   [`STREAM_IDLE`] of the last ([`next_within`]), however long the
//!   whole transfer is.
//!
//! `docs/limits.md` lists these with every other limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::v1;

/// The largest message (encoded) any client or server sends or accepts.
pub const MAX_MESSAGE: usize = 64 << 20;

/// How long a unary call may take at a server.
pub const UNARY_DEADLINE: Duration = Duration::from_secs(30);

/// How long a stream may go without a message before it is given up on.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);

/// The slowest a bulk transfer may go on average: an upload of `n` bytes
/// is given [`transfer_deadline`]`(n)` in all.
pub const MIN_TRANSFER_RATE: u64 = 1 << 20;

/// How long a client waits for an upload of `bytes` to be acknowledged:
/// an idle period plus the time at [`MIN_TRANSFER_RATE`].
pub fn transfer_deadline(bytes: u64) -> Duration {
    STREAM_IDLE + Duration::from_secs(bytes / MIN_TRANSFER_RATE)
}

/// Calls whose length follows the amount of data they move: bounded by
/// [`STREAM_IDLE`] between messages, not by [`UNARY_DEADLINE`]. (Server
/// streams are not listed: a handler returns their stream at once, and
/// the stream's own sends are bounded by idle time.)
pub const BY_PROGRESS: &[&str] = &["/idunno.v1.Sdfs/Put", "/idunno.v1.Sdfs/WriteBlob", "/idunno.v1.Sdfs/FetchBlob"];

/// A generated client or server with [`MAX_MESSAGE`] set both ways.
pub trait Limited {
    fn limited(self) -> Self;
}

macro_rules! limited {
    ($($client:ident, $server:ident, $svc:ident in $m:ident / $sm:ident;)*) => {$(
        impl Limited for v1::$m::$client<tonic::transport::Channel> {
            fn limited(self) -> Self {
                self.max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
            }
        }
        impl<T: v1::$sm::$svc> Limited for v1::$sm::$server<T> {
            fn limited(self) -> Self {
                self.max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
            }
        }
    )*};
}

limited! {
    CoordinatorClient, CoordinatorServer, Coordinator in coordinator_client / coordinator_server;
    JobsClient, JobsServer, Jobs in jobs_client / jobs_server;
    NodeClient, NodeServer, Node in node_client / node_server;
    RaftClient, RaftServer, Raft in raft_client / raft_server;
    SdfsClient, SdfsServer, Sdfs in sdfs_client / sdfs_server;
}

/// The next message of an incoming stream, or an error if none comes
/// within [`STREAM_IDLE`]: a peer that goes quiet is treated like one that
/// went away. `what` names the transfer in the error.
pub async fn next_within<T>(stream: &mut tonic::Streaming<T>, what: &str) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(STREAM_IDLE, stream.message()).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "{what}: nothing arrived for {} s; given up",
            STREAM_IDLE.as_secs()
        ))),
    }
}

/// Bounds every unary call at a server by [`UNARY_DEADLINE`], and leaves
/// the calls of [`BY_PROGRESS`] to their handlers' idle bounds. Install
/// with `tonic::transport::Server::builder().layer(DeadlineLayer)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let bounded = !BY_PROGRESS.contains(&req.uri().path());
        let method = req.uri().path().to_string();
        let fut = self.inner.call(req);
        Box::pin(async move {
            if !bounded {
                return fut.await.map_err(Into::into);
            }
            match tokio::time::timeout(UNARY_DEADLINE, fut).await {
                Ok(r) => r.map_err(Into::into),
                // tonic turns a boxed Status into the call's status.
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "{method} took longer than {} s",
                    UNARY_DEADLINE.as_secs()
                ))) as BoxError),
            }
        })
    }
}

/// The caller's deadline from gRPC's `grpc-timeout` header (`10S`, `250m`,
/// …), if it set one, at most [`UNARY_DEADLINE`] (what a server allows a
/// unary call anyway): the header is the caller's, and a time too far off
/// must not overflow the clock it is added to.
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(UNARY_DEADLINE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_and_bounded() {
        let meta = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            m
        };
        assert_eq!(grpc_timeout(&meta("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&meta("7S")), Some(Duration::from_secs(7)));
        assert_eq!(grpc_timeout(&meta("99999999H")), Some(UNARY_DEADLINE));
        assert_eq!(grpc_timeout(&meta("18446744073709551615n")), Some(UNARY_DEADLINE));
        assert_eq!(grpc_timeout(&meta("5x")), None);
        assert_eq!(grpc_timeout(&meta("S")), None);
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
