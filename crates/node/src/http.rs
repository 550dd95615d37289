//! The node's HTTP server: the JSON API under `/api/`. (The dashboard and
//! `/metrics` come with the issues that give them something to show.)
//!
//! With a cluster secret it serves HTTPS only (the node's certificate, from
//! the secret's node authority) and every request needs the token derived
//! from the secret: `Authorization: Bearer T`, or the cookie a browser gets
//! by opening the URL `idunno dashboard-url` prints (`?token=T`, which
//! answers with the cookie and a redirect to the same page without it).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use idunno_rpc::json::{MemberJson, StatusJson};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idunno_auth::KeysCell;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::service::Shared;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/status", get(status))
        .route("/api/members", get(members))
        .with_state(shared)
}

async fn index() -> &'static str {
    "idunno node\n\nGET /api/status   this node and what it knows of the cluster\nGET /api/members  every member as this node sees it\n"
}

async fn status(State(s): State<Shared>) -> Json<StatusJson> {
    Json(StatusJson::from(&s.status()))
}

async fn members(State(s): State<Shared>) -> Json<Vec<MemberJson>> {
    Json(s.members().iter().map(MemberJson::from).collect())
}

/// Serve until `shutdown` fires: plain HTTP without a secret, HTTPS with
/// the token check with one.
pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    keys: Option<KeysCell>,
    refused: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let app = router(shared);
    let r = match keys {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
        Some(keys) => {
            let local = listener.local_addr();
            let app = app.layer(axum::middleware::from_fn_with_state((keys.clone(), refused.clone()), require_token));
            let config_keys = keys.clone();
            let config = move || match config_keys.current().server.as_ref() {
                Some(s) => s.http.clone(),
                // A node's keys always have server credentials; should they
                // not, TLS handshakes fail and nothing is served.
                None => Arc::new(idunno_auth::tls::unusable_server_config()),
            };
            let rx = idunno_net::tls::accept_tls(listener, config, refused);
            match local {
                Ok(local) => {
                    axum::serve(TlsListener { rx, local }, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "http server");
    }
}

/// TLS connections from [`idunno_net::tls::accept_tls`] as axum's listener.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<idunno_net::tls::Buffered>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<idunno_net::tls::Buffered>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accepting task ended (it only does when this listener is
            // gone); wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

const COOKIE: &str = "idunno_token";

/// Lets a request through if it carries an accepted token; a `?token=`
/// login sets the cookie and redirects to the page without the token.
async fn require_token(
    State((keys, refused)): State<(KeysCell, Arc<AtomicU64>)>,
    req: Request,
    next: Next,
) -> Response {
    let keys = keys.current();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| keys.tokens.accepts(t.trim()));
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))
        .any(|t| keys.tokens.accepts(t));
    if bearer || cookie {
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or("");
    let given = query.split('&').find_map(|kv| kv.strip_prefix("token="));
    if let Some(t) = given
        && keys.tokens.accepts(t)
    {
        let rest: Vec<&str> = query.split('&').filter(|kv| !kv.starts_with("token=")).collect();
        let path = req.uri().path();
        let location = if rest.is_empty() { path.to_string() } else { format!("{path}?{}", rest.join("&")) };
        let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; Secure; SameSite=Strict");
        return (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, location)]).into_response();
    }
    refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthenticated: open the address `idunno dashboard-url` prints, or send Authorization: Bearer TOKEN\n",
    )
        .into_response()
}
