//! The node's HTTP server: the JSON API under `/api/`. (The dashboard and
//! `/metrics` come with the issues that give them something to show.)

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use idunno_rpc::json::{MemberJson, StatusJson};
use tokio::net::TcpListener;
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

/// Serve until `shutdown` fires.
pub async fn serve(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "http server");
    }
}
