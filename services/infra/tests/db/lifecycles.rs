//! The domain's transition tables walked against the database: every state a column's CHECK
//! allows is a state of its Rust enum and back, and a guarded move (`db::move_to`, the only way
//! a query changes a state) succeeds exactly for the moves the domain allows.

use std::collections::BTreeSet;

use sqlx::PgPool;
use vtx_domain::{
    ChunkEncodeState, DeliveryState, ExtremeState, JobState, SliceState, TierState, UploadState,
    VideoState,
};
use vtx_infra::db::{BindMove, StateColumn, move_to};

/// Table and column names come from this file, never from input.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// The values the CHECK constraint on `table.column` allows.
async fn check_values(pool: &PgPool, table: &str, column: &str) -> BTreeSet<String> {
    let defs: Vec<(String,)> = sqlx::query_as(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
         WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND a.attname = $2",
    )
    .bind(table)
    .bind(column)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(defs.len(), 1, "{table}.{column} has one CHECK: {defs:?}");
    let def = &defs[0].0;
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

async fn walk<S: StateColumn>(pool: &PgPool, table: &str, column: &str) {
    let allowed = check_values(pool, table, column).await;
    let states: BTreeSet<String> = S::states().iter().map(|s| s.to_string()).collect();
    assert_eq!(allowed, states, "{table}.{column}: CHECK and enum disagree");

    // A table with the same column and the same CHECK, so every pair can be tried in isolation.
    let walk = format!("walk_{table}_{column}");
    sqlx::query(sql(format!(
        "CREATE TABLE {walk} (id integer PRIMARY KEY, {column} text NOT NULL)"
    )))
    .execute(pool)
    .await
    .unwrap();
    let def: (String,) = sqlx::query_as(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
         WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND a.attname = $2",
    )
    .bind(table)
    .bind(column)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(sql(format!("ALTER TABLE {walk} ADD {}", def.0)))
        .execute(pool)
        .await
        .unwrap();
    let bogus = sqlx::query(sql(format!("INSERT INTO {walk} VALUES (-1, 'bogus')")))
        .execute(pool)
        .await;
    assert!(bogus.is_err(), "{table}.{column} accepts any text");

    let mut id = 0;
    for from in S::states() {
        for to in S::states() {
            id += 1;
            sqlx::query(sql(format!("INSERT INTO {walk} VALUES ($1, $2)")))
                .bind(id)
                .bind(*from)
                .execute(pool)
                .await
                .unwrap();
            let moved = sqlx::query(sql(format!(
                "UPDATE {walk} SET {column} = $2 WHERE id = $1 AND {column} = ANY($3)"
            )))
            .bind(id)
            .bind_move(move_to(*to))
            .execute(pool)
            .await
            .unwrap()
            .rows_affected();
            assert_eq!(
                moved == 1,
                from.can_become(*to),
                "{table}.{column}: {from} -> {to}"
            );
            let (now,): (S,) =
                sqlx::query_as(sql(format!("SELECT {column} FROM {walk} WHERE id = $1")))
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            assert_eq!(now, if moved == 1 { *to } else { *from });
        }
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_state_column_follows_its_domain_table(pool: PgPool) {
    walk::<UploadState>(&pool, "uploads", "state").await;
    walk::<VideoState>(&pool, "videos", "state").await;
    walk::<JobState>(&pool, "jobs", "state").await;
    walk::<TierState>(&pool, "job_tiers", "state").await;
    walk::<SliceState>(&pool, "slices", "state").await;
    walk::<ChunkEncodeState>(&pool, "upload_chunks", "encode_state").await;
    walk::<ExtremeState>(&pool, "extreme_requests", "state").await;
    walk::<DeliveryState>(&pool, "webhook_deliveries", "state").await;
}
