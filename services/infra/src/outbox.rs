//! Transactional outbox. A task is inserted in the same transaction as the state change it
//! announces; the relay publishes it (with a publisher confirm) and only then deletes it. A crash
//! between the two republishes it: delivery is at-least-once, and every handler is idempotent.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use vtx_domain::Task;

use crate::broker::BrokerClient;

const CHANNEL: &str = "vtx_outbox";
const BATCH: i64 = 100;

pub async fn enqueue(tx: &mut Transaction<'static, Postgres>, task: &Task) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (queue, payload) VALUES ($1, $2)")
        .bind(task.queue())
        .bind(sqlx::types::Json(task))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Publishes outbox rows until `shutdown`. Several relays may run (one per process): rows are
/// claimed with `SKIP LOCKED`.
pub async fn run_relay(pool: PgPool, broker: BrokerClient, shutdown: CancellationToken) {
    let mut listener = None;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        if listener.is_none() {
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot connect a listener; polling");
                    None
                }
            };
        }
        match relay_batch(&pool, &broker).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        }
        // Wait for a notification, or poll once a second in case one was missed.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            res = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => { tokio::time::sleep(Duration::from_secs(1)).await; Ok(()) }
                }
            } => {
                if res.is_err() {
                    listener = None;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Publishes up to one batch; returns how many rows went out (or were set aside).
async fn relay_batch(pool: &PgPool, broker: &BrokerClient) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
        "SELECT id, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let broker = broker.get().await?;
    let mut ids = Vec::with_capacity(rows.len());
    for (id, payload) in rows {
        match serde_json::from_value::<Task>(payload.0) {
            Ok(task) => broker.publish(&task).await?,
            // Not a task this version knows: retrying cannot help, and it must not hold up
            // the rows behind it.
            Err(e) => {
                tracing::error!(id, error = %e, "outbox row is not a task; set aside");
                metrics::counter!("vtx_outbox_set_aside_total").increment(1);
                sqlx::query(
                    "INSERT INTO outbox_set_aside (id, queue, payload, error, created_at)
                     SELECT id, queue, payload, $2, created_at FROM outbox WHERE id = $1
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(e.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        ids.push(id);
    }
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::debug!(count = ids.len(), "outbox published");
    Ok(ids.len())
}
