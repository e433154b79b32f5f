//! Objects due for deletion.

use sqlx::postgres::PgPool;

/// Garbage whose time has come (at most `limit` entries).
pub async fn due_garbage(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as(
        "SELECT id, prefix FROM garbage WHERE delete_after <= now() ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn forget_garbage(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM garbage WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}
