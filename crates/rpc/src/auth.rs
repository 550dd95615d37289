//! Who may call what. With a cluster secret every connection is TLS and
//! its peer has a role (`idunno_net::PeerInfo`): node-to-node methods
//! ([`NODE_ONLY`]) need a node certificate, every other method a node or
//! client certificate. A call with neither gets UNAUTHENTICATED, a client
//! calling a node method PERMISSION_DENIED; neither says anything about
//! the cluster. The Open Inference Protocol's calls ([`TOKEN_PATHS`]) may
//! carry the HTTP token instead of a certificate. Without a secret (a
//! loopback-only node) all calls pass.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use idunno_net::PeerInfo;

/// Methods only nodes call: Raft, blob transfer between holders, the
/// worker's reports and requests, the training all-reduce, and the
/// forwarded writes and reads of the coordinator.
pub const NODE_ONLY: &[&str] = &[
    "/idunno.v1.Raft/AppendEntries",
    "/idunno.v1.Raft/Vote",
    "/idunno.v1.Raft/InstallSnapshot",
    "/idunno.v1.Coordinator/Apply",
    "/idunno.v1.Coordinator/ReadIndex",
    "/idunno.v1.Sdfs/WriteBlob",
    "/idunno.v1.Sdfs/ReadBlob",
    "/idunno.v1.Sdfs/BlobChunks",
    "/idunno.v1.Sdfs/FetchBlob",
    "/idunno.v1.Jobs/Work",
    "/idunno.v1.Jobs/Infer",
    "/idunno.v1.Jobs/Reduce",
];

/// The Open Inference Protocol's service: its stock clients (tritonclient)
/// hold no certificate of ours, so a call to it may instead carry the
/// cluster's HTTP token, `authorization: Bearer T`, as `/v2` over HTTP does.
pub const TOKEN_PATHS: &str = "/inference.GRPCInferenceService/";

/// Checks every call's role. Install with
/// `tonic::transport::Server::builder().layer(AuthLayer::new(..))`.
#[derive(Clone)]
pub struct AuthLayer {
    /// The node has a secret: calls need a role.
    required: bool,
    /// Calls refused (shown by `status`).
    refused: Arc<AtomicU64>,
    /// What accepts a token for [`TOKEN_PATHS`] (none: only roles).
    tokens: Option<idunno_auth::KeysCell>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").field("required", &self.required).field("tokens", &self.tokens.is_some()).finish()
    }
}

impl AuthLayer {
    pub fn new(required: bool, refused: Arc<AtomicU64>) -> AuthLayer {
        AuthLayer { required, refused, tokens: None }
    }

    /// Accept the token of `keys` on the Open Inference Protocol's calls.
    pub fn with_tokens(mut self, keys: Option<idunno_auth::KeysCell>) -> AuthLayer {
        self.tokens = keys;
        self
    }

    /// Whether a call without a role may go on on its token.
    fn token_accepted<B>(&self, req: &http::Request<B>) -> bool {
        let Some(keys) = &self.tokens else { return false };
        req.uri().path().starts_with(TOKEN_PATHS)
            && req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .is_some_and(|t| keys.current().tokens.accepts(t.trim()))
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, layer: self.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call is refused, or `None` if it may go on.
pub fn refusal(peer: PeerInfo, path: &str) -> Option<tonic::Status> {
    use idunno_auth::Role;
    match peer.role {
        None if path.starts_with(TOKEN_PATHS) => Some(tonic::Status::unauthenticated(
            "unauthenticated: send the cluster's token as `authorization: Bearer TOKEN` (idunno dashboard-url prints it)",
        )),
        None => Some(tonic::Status::unauthenticated("unauthenticated: this node needs the cluster secret")),
        Some(Role::Client) if NODE_ONLY.contains(&path) => {
            Some(tonic::Status::permission_denied("permission denied: only nodes may call this method"))
        }
        Some(_) => None,
    }
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
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
        if self.layer.required {
            let peer = req.extensions().get::<PeerInfo>().copied().unwrap_or_default();
            let by_token = peer.role.is_none() && self.layer.token_accepted(&req);
            if let Some(status) = refusal(peer, req.uri().path()).filter(|_| !by_token) {
                self.layer.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = req.uri().path(), ?peer, "call refused");
                return Box::pin(async move { Err(Box::new(status) as BoxError) });
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use idunno_auth::Role;

    use super::*;

    #[test]
    fn roles_reach_what_they_may() {
        let none = PeerInfo { secured: true, role: None };
        let client = PeerInfo { secured: true, role: Some(Role::Client) };
        let node = PeerInfo { secured: true, role: Some(Role::Node) };
        for path in ["/idunno.v1.Node/Status", "/idunno.v1.Sdfs/Put", "/idunno.v1.Jobs/AddJob"] {
            assert_eq!(refusal(none, path).map(|s| s.code()), Some(tonic::Code::Unauthenticated));
            assert!(refusal(client, path).is_none());
            assert!(refusal(node, path).is_none());
        }
        for path in NODE_ONLY {
            assert_eq!(refusal(client, path).map(|s| s.code()), Some(tonic::Code::PermissionDenied));
            assert!(refusal(node, path).is_none());
        }
    }
}
