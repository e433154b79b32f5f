//! Webhook retention on the real PostgreSQL: old events go once every delivery has ended.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;
use vtx_infra::db::webhooks::forget_old_events;

/// An event `age_days` old with one delivery per state in `deliveries`.
async fn event(pool: &PgPool, endpoint: Uuid, age_days: i32, deliveries: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO webhook_events (id, event_type, occurred_at, fanned_out)
         VALUES ($1, 'upload.expired', now() - make_interval(days => $2), true)",
    )
    .bind(id)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
    for (i, state) in deliveries.iter().enumerate() {
        // Each delivery to an endpoint of its own (the key is event and endpoint).
        let to = if i == 0 {
            endpoint
        } else {
            new_endpoint(pool).await
        };
        sqlx::query(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id, payload, state)
             VALUES ($1, $2, '{}', $3)",
        )
        .bind(id)
        .bind(to)
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
    }
    id
}

async fn new_endpoint(pool: &PgPool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO webhook_endpoints (id, url, secret) VALUES ($1, 'http://x/', 's')")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    id
}

async fn exists(pool: &PgPool, event: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM webhook_events WHERE id = $1)")
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn old_events_go_once_every_delivery_has_ended(pool: PgPool) {
    let endpoint = new_endpoint(&pool).await;
    let delivered = event(&pool, endpoint, 40, &["delivered"]).await;
    let failed = event(&pool, endpoint, 40, &["failed", "delivered"]).await;
    let still_trying = event(&pool, endpoint, 40, &["delivered", "pending"]).await;
    let recent = event(&pool, endpoint, 5, &["delivered"]).await;
    let month = Duration::from_secs(30 * 86_400);
    assert_eq!(forget_old_events(&pool, month, 1000).await.unwrap(), 2);
    assert!(!exists(&pool, delivered).await);
    assert!(!exists(&pool, failed).await);
    assert!(exists(&pool, still_trying).await);
    assert!(exists(&pool, recent).await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 3, "the forgotten events' deliveries went with them");
}
