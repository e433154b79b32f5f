//! Worker processes register what they can encode.

use sqlx::postgres::PgPool;

/// Announces a worker and what it can do (refreshed by its heartbeat).
pub async fn register_worker(
    pool: &PgPool,
    id: &str,
    host: &str,
    encoders: &[String],
    queues: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO workers (id, host, encoders, queues) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET encoders = $3, queues = $4, last_seen = now()",
    )
    .bind(id)
    .bind(host)
    .bind(encoders)
    .bind(queues)
    .execute(pool)
    .await
    .map(|_| ())
}
