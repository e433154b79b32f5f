//! Webhooks: endpoints, events recorded inside the transactions whose state changes they report,
//! their fan-out to endpoints, and each delivery's attempts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::webhooks::EventType;
use vtx_domain::{DeliveryState, Lifecycle, UploadId, VideoId};

use super::{BindMove, move_to, secs};

/// Records that `event` happened, in the transaction that made it happen.
pub(crate) async fn record_event(
    tx: &mut Transaction<'static, Postgres>,
    event: EventType,
    video: Option<VideoId>,
    upload: Option<UploadId>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_events (id, event_type, video_id, upload_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(Uuid::new_v4())
    .bind(event)
    .bind(video.map(|v| v.as_uuid()))
    .bind(upload.map(|u| u.as_uuid()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow)]
pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub secret: String,
    pub description: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, secret, description, enabled, created_at";

pub async fn count_endpoints(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(pool)
        .await
}

pub async fn create_endpoint(
    pool: &PgPool,
    url: &str,
    event_types: &[EventType],
    secret: &str,
    description: &str,
    enabled: bool,
) -> sqlx::Result<EndpointRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (id, url, event_types, secret, description, enabled)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(url)
    .bind(event_types.to_vec())
    .bind(secret)
    .bind(description)
    .bind(enabled)
    .fetch_one(pool)
    .await
}

pub async fn endpoints(pool: &PgPool) -> sqlx::Result<Vec<EndpointRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )))
    .fetch_all(pool)
    .await
}

pub async fn endpoint(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Changes what is given; `None` when there is no such endpoint.
pub async fn update_endpoint(
    pool: &PgPool,
    id: Uuid,
    url: Option<&str>,
    event_types: Option<&[EventType]>,
    description: Option<&str>,
    enabled: Option<bool>,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET url = COALESCE($2, url),
                event_types = COALESCE($3, event_types),
                description = COALESCE($4, description), enabled = COALESCE($5, enabled),
                updated_at = now()
         WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(id)
    .bind(url)
    .bind(event_types.map(<[EventType]>::to_vec))
    .bind(description)
    .bind(enabled)
    .fetch_optional(pool)
    .await
}

/// Deletes an endpoint and its deliveries; false when there was none.
pub async fn delete_endpoint(pool: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

#[derive(Clone, Debug, FromRow)]
pub struct DeliveryRow {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub state: DeliveryState,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An endpoint's deliveries, newest first, optionally in one state.
pub async fn deliveries(
    pool: &PgPool,
    endpoint: Uuid,
    state: Option<DeliveryState>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        "SELECT d.event_id, e.event_type, d.state, d.attempts, d.last_status, d.last_error,
                d.next_attempt_at, d.created_at, d.finished_at
         FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
         WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.state = $2)
         ORDER BY d.created_at DESC, d.event_id LIMIT $3",
    )
    .bind(endpoint)
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An event waiting to be fanned out.
#[derive(Clone, Debug, FromRow)]
pub struct EventRow {
    pub id: Uuid,
    pub event_type: EventType,
    pub video_id: Option<Uuid>,
    pub upload_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// Takes up to `limit` events not yet fanned out, locked for this transaction (another
/// dispatcher skips them).
pub async fn events_to_fan_out(
    tx: &mut Transaction<'static, Postgres>,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT id, event_type, video_id, upload_id, occurred_at FROM webhook_events
         WHERE NOT fanned_out ORDER BY occurred_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Gives `event` to every enabled endpoint that asked for its type, with `payload`, and marks
/// it fanned out. Returns the deliveries made.
pub async fn fan_out(
    tx: &mut Transaction<'static, Postgres>,
    event: &EventRow,
    payload: &serde_json::Value,
) -> sqlx::Result<u64> {
    let n = sqlx::query(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, payload, state)
         SELECT $1, id, $3, $4 FROM webhook_endpoints
         WHERE enabled AND (cardinality(event_types) = 0 OR $2 = ANY(event_types))
         ON CONFLICT DO NOTHING",
    )
    .bind(event.id)
    .bind(event.event_type)
    .bind(sqlx::types::Json(payload))
    .bind(DeliveryState::Pending)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE webhook_events SET fanned_out = true WHERE id = $1")
        .bind(event.id)
        .execute(&mut **tx)
        .await?;
    Ok(n)
}

/// A delivery to attempt now.
#[derive(Clone, Debug, FromRow)]
pub struct DueDelivery {
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub secret: String,
    pub payload: sqlx::types::Json<serde_json::Value>,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// Claims up to `limit` due deliveries to enabled endpoints: each counts an attempt and is
/// hidden from other dispatchers for `lease` (a dispatcher that dies mid-attempt leaves it to be
/// tried again then).
pub async fn claim_due_deliveries(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> sqlx::Result<Vec<DueDelivery>> {
    sqlx::query_as(
        "WITH due AS (
             SELECT d.event_id, d.endpoint_id FROM webhook_deliveries d
             JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled
             WHERE d.state = $1 AND d.next_attempt_at <= now()
             ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED)
         UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $3)
         FROM due, webhook_endpoints w
         WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id AND w.id = d.endpoint_id
         RETURNING d.event_id, d.endpoint_id, w.url, w.secret, d.payload, d.attempts",
    )
    .bind(DeliveryState::Pending)
    .bind(limit)
    .bind(secs(lease))
    .fetch_all(pool)
    .await
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    /// Try again after the wait.
    Retry {
        status: Option<u16>,
        error: String,
        after: Duration,
    },
    /// The schedule ran out.
    Failed {
        status: Option<u16>,
        error: String,
    },
}

pub async fn record_attempt(
    pool: &PgPool,
    event: Uuid,
    endpoint: Uuid,
    result: &AttemptResult,
) -> sqlx::Result<()> {
    let (to, status, error, after) = match result {
        AttemptResult::Delivered { status } => {
            (DeliveryState::Delivered, Some(*status), None, None)
        }
        AttemptResult::Retry {
            status,
            error,
            after,
        } => (DeliveryState::Pending, *status, Some(error), Some(*after)),
        AttemptResult::Failed { status, error } => {
            (DeliveryState::Failed, *status, Some(error), None)
        }
    };
    let finished = to.is_terminal();
    sqlx::query(
        "UPDATE webhook_deliveries SET state = $3, last_status = $5, last_error = $6,
                next_attempt_at = CASE WHEN $7::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $7) END,
                finished_at = CASE WHEN $8 THEN now() END
         WHERE event_id = $1 AND endpoint_id = $2 AND state = ANY($4)",
    )
    .bind(event)
    .bind(endpoint)
    .bind_move(move_to(to))
    .bind(status.map(i32::from))
    .bind(error.map(|e| e.chars().take(500).collect::<String>()))
    .bind(after.map(secs))
    .bind(finished)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets up to `limit` events older than `keep` whose deliveries have all ended (delivered
/// or failed); their deliveries go with them. Returns how many events went.
pub async fn forget_old_events(pool: &PgPool, keep: Duration, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM webhook_events WHERE id IN (
             SELECT e.id FROM webhook_events e
             WHERE e.fanned_out AND e.occurred_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.event_id = e.id AND NOT (d.state = ANY($2)))
             LIMIT $3)",
    )
    .bind(secs(keep))
    .bind(DeliveryState::terminal())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// When the newest event about `video` happened (its status stream sends a new status then).
pub async fn last_event_of(pool: &PgPool, video: VideoId) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(occurred_at) FROM webhook_events WHERE video_id = $1")
        .bind(video.as_uuid())
        .fetch_one(pool)
        .await
}
