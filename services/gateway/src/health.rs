use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "The process is alive.",
    security(()),
    responses(
        (status = 200, description = "Alive.", body = serde_json::Value)
    )
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
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
    let timeout = std::time::Duration::from_secs(3);
    let (db, mq, s3) = tokio::join!(
        tokio::time::timeout(timeout, async {
            sqlx::query("SELECT 1")
                .execute(&state.pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        tokio::time::timeout(timeout, async {
            state.broker.check().await.map_err(|e| e.to_string())
        }),
        tokio::time::timeout(timeout, async {
            state.store.check().await.map_err(|e| e.to_string())
        }),
    );
    let report = |r: Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => ("ok".to_string(), true),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            ("unavailable".to_string(), false)
        }
        Err(_) => ("timeout".to_string(), false),
    };
    let (db, db_ok) = report(db);
    let (mq, mq_ok) = report(mq);
    let (s3, s3_ok) = report(s3);
    let ready = db_ok && mq_ok && s3_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not-ready" },
            "checks": { "postgres": db, "rabbitmq": mq, "s3": s3 }
        })),
    )
}
