//! The node's HTTP server: the live dashboard at `/`, Prometheus metrics
//! at `/metrics`, and the JSON API under `/api/` the dashboard reads.
//! Every answer comes from this node's copy of the state (reads where
//! they arrive: a dashboard polling every second costs the leader
//! nothing).
//!
//! With a cluster secret it serves HTTPS only (the node's certificate, from
//! the secret's node authority) and every request needs the token derived
//! from the secret: `Authorization: Bearer T`, or the cookie a browser gets
//! by opening the URL `idunno dashboard-url` prints (`?token=T`, which
//! answers with the cookie and a redirect to the same page without it).
//! `/metrics` may be left open with `metrics_public`.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use idunno_rpc::json::{MemberJson, StatusJson};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use idunno_auth::KeysCell;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::history::History;
use crate::metrics::NodeMetrics;
use crate::service::Shared;

/// What the HTTP handlers read. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    pub shared: Shared,
    pub metrics: Arc<NodeMetrics>,
    pub history: Arc<Mutex<History>>,
    /// SDFS's replication factor (for "under-replicated").
    pub replicas: usize,
    /// `/metrics` needs no token.
    pub metrics_public: bool,
    /// The Open Inference Protocol under `/v2`.
    pub serving: Arc<idunno_serve::Serving>,
    /// `/api/serve` asks every node for its figures: at most once a
    /// second, whatever the number of viewers.
    pub jobs: Arc<idunno_jobs::Jobs>,
    pub serve_cache: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>,
}

/// How long an `/api/serve` answer is reused.
const SERVE_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

/// The dashboard: one page, its script and styles inline, no external
/// fetch (built into the binary).
const DASHBOARD: &str = include_str!("dashboard.html");

pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api", get(api_index))
        .route("/api/status", get(status))
        .route("/api/members", get(members))
        .route("/api/jobs", get(jobs))
        .route("/api/files", get(files))
        .route("/api/serve", get(serve_status))
        .route("/api/events", get(events))
        .route("/api/history", get(history))
        .with_state(web)
}

async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD)).into_response()
}

async fn api_index() -> &'static str {
    "idunno node: the JSON API\n\n\
     GET /api/status            this node and what it knows of the cluster\n\
     GET /api/members           every member as this node sees it\n\
     GET /api/jobs              every job's status, assignments and fairness (as `job status --json`)\n\
     GET /api/files             SDFS files: versions, replicas, under-replicated\n\
     GET /api/serve             served models: rates, latencies, queues, placement (as `serve status --json`)\n\
     GET /api/events?after=N    the cluster's timeline after event N (as `idunno events --json`)\n\
     GET /api/history?after_ms=T  per-second samples of rates, latencies and training curves\n\
     GET /metrics               Prometheus metrics\n"
}

async fn metrics(State(w): State<Web>) -> Response {
    match w.metrics.render() {
        Ok(text) => {
            ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be rendered\n").into_response(),
    }
}

async fn status(State(w): State<Web>) -> Json<StatusJson> {
    Json(StatusJson::from(&w.shared.status()))
}

async fn members(State(w): State<Web>) -> Json<Vec<MemberJson>> {
    Json(w.shared.members().iter().map(MemberJson::from).collect())
}

async fn jobs(State(w): State<Web>) -> Json<Value> {
    let data = w.shared.coordinator.local_state();
    let now = idunno_net::now_ms();
    let jobs = idunno_jobs::status::status(&data.state, None, now).unwrap_or_else(|| json!([]));
    let assignments = idunno_jobs::status::assignments_explained(&data.state, now);
    Json(json!({ "jobs": jobs, "assignments": assignments }))
}

async fn serve_status(State(w): State<Web>) -> Json<Value> {
    let mut cache = w.serve_cache.lock().await;
    if let Some((at, doc)) = cache.as_ref()
        && at.elapsed() < SERVE_CACHE
    {
        return Json(doc.clone());
    }
    let doc = w.jobs.serve_status().await;
    *cache = Some((std::time::Instant::now(), doc.clone()));
    Json(doc)
}

/// At most this many files in one answer (the rest are counted).
const FILES_SHOWN: usize = 500;

async fn files(State(w): State<Web>) -> Json<Value> {
    let data = w.shared.coordinator.local_state();
    let live: std::collections::BTreeSet<u64> =
        w.shared.membership.view().members.iter().filter(|m| m.state.is_up()).map(|m| m.identity.id.0).collect();
    let want = w.replicas.min(live.len()).max(1);
    let mut rows = Vec::new();
    let (mut files, mut versions, mut under) = (0usize, 0usize, 0usize);
    for (name, entry) in data.state.namespace.files.iter().filter(|(_, e)| !e.versions.is_empty()) {
        files += 1;
        let mut vs = Vec::new();
        for v in entry.versions.iter().rev() {
            versions += 1;
            let held = v.replicas.iter().filter(|r| live.contains(r)).count();
            let short = held < want;
            under += usize::from(short);
            vs.push(json!({
                "version": v.version, "size": v.size, "replicas": v.replicas,
                "live_replicas": held, "under_replicated": short,
            }));
        }
        if rows.len() < FILES_SHOWN {
            rows.push(json!({ "name": name, "versions": vs }));
        }
    }
    Json(json!({
        "files": files, "versions": versions, "under_replicated": under,
        "replicas": w.replicas, "shown": rows,
    }))
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// At most this many events per answer (ask again with the last `seq`).
const EVENTS_PER_PAGE: usize = 1000;

async fn events(State(w): State<Web>, Query(q): Query<After>) -> Json<Value> {
    let data = w.shared.coordinator.local_state();
    let limit = q.limit.unwrap_or(EVENTS_PER_PAGE).clamp(1, EVENTS_PER_PAGE);
    let events = data.state.events.after(q.after, limit);
    Json(serde_json::to_value(events).unwrap_or_else(|_| json!([])))
}

#[derive(Deserialize)]
struct AfterMs {
    #[serde(default)]
    after_ms: u64,
}

async fn history(State(w): State<Web>, Query(q): Query<AfterMs>) -> Json<Value> {
    let samples = w.history.lock().unwrap_or_else(|e| e.into_inner()).after(q.after_ms);
    Json(json!({ "now_ms": idunno_net::now_ms(), "samples": samples }))
}

/// Serve until `shutdown` fires: plain HTTP without a secret, HTTPS with
/// the token check with one.
pub async fn serve(
    listener: TcpListener,
    web: Web,
    keys: Option<KeysCell>,
    refused: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let metrics_public = web.metrics_public;
    let serving = web.serving.clone();
    let app = router(web).merge(idunno_serve::http::router(serving));
    let r = match keys {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
        Some(keys) => {
            let local = listener.local_addr();
            let guard = Guard { keys: keys.clone(), refused: refused.clone(), metrics_public };
            let app = app.layer(axum::middleware::from_fn_with_state(guard, require_token));
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

#[derive(Clone)]
struct Guard {
    keys: KeysCell,
    refused: Arc<AtomicU64>,
    metrics_public: bool,
}

/// Lets a request through if it carries an accepted token (or is for
/// `/metrics` and those are public); a `?token=` login sets the cookie and
/// redirects to the page without the token.
async fn require_token(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if guard.metrics_public && req.uri().path() == "/metrics" {
        return next.run(req).await;
    }
    let (keys, refused) = (guard.keys.current(), guard.refused);
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
