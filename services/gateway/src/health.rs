use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use crate::AppState;

/// Liveness: the process answers and every loop in it makes progress (see `vtx_infra::health`).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "The process is alive and none of its loops is stuck.",
    security(()),
    responses(
        (status = 200, description = "Alive.", body = serde_json::Value),
        (status = 503, description = "A loop is stuck or died.", body = serde_json::Value)
    )
)]
pub async fn healthz() -> (StatusCode, Json<Value>) {
    let (ok, report) = vtx_infra::health::liveness();
    (status(ok), Json(report))
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Readiness: PostgreSQL, RabbitMQ and S3 all answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "PostgreSQL, RabbitMQ and S3 answer.",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = serde_json::Value),
        (status = 503, description = "A dependency is down.", body = serde_json::Value)
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let deps = vtx_infra::health::Dependencies {
        pool: state.pool.clone(),
        broker: state.broker.clone(),
        store: state.store.clone(),
    };
    let (ok, report) = deps.readiness().await;
    (status(ok), Json(report))
}
