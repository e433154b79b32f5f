//! PostgreSQL: the durable truth. Every state change is a guarded `UPDATE` whose `WHERE` clause
//! comes from the domain's transition rules, so concurrent or duplicate handlers cannot move a
//! row backwards.

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Config;

// One module per aggregate; callers use `db::` and see them all.
pub mod garbage;
pub mod hotness;
pub mod jobs;
pub mod leases;
pub mod pipelined;
pub mod plans;
pub mod slices;
pub mod tiers;
pub mod uploads;
pub mod workers;
pub use garbage::*;
pub use hotness::*;
pub use jobs::*;
pub use leases::*;
pub use pipelined::*;
pub use plans::*;
pub use slices::*;
pub use tiers::*;
pub use uploads::*;
pub use workers::*;

/// Migrations under the repository's `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub async fn connect(cfg: &Config) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(cfg.database_max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(cfg.database_url.expose())
        .await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A duration as PostgreSQL's `make_interval(secs => ...)` takes it.
pub(crate) fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}
