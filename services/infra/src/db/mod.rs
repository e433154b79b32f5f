//! PostgreSQL: the durable truth. Every state change is a guarded `UPDATE` whose guard comes from
//! the domain's transition table ([`Move`]), so concurrent or duplicate handlers cannot move a
//! row backwards, and no SQL text spells a state.

use sqlx::postgres::{PgArguments, PgHasArrayType, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryAs, QueryScalar};
use vtx_domain::Lifecycle;

use crate::config::Config;

// One module per aggregate; callers use `db::` and see them all.
pub mod backlog;
pub mod experiments;
pub mod garbage;
pub mod hotness;
pub mod jobs;
pub mod leases;
pub mod live_ingest;
pub mod plans;
pub mod slices;
pub mod tiers;
pub mod uploads;
pub mod webhooks;
pub mod workers;
pub use backlog::*;
pub use garbage::*;
pub use hotness::*;
pub use jobs::*;
pub use leases::*;
pub use live_ingest::*;
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

/// A state column's type: its domain lifecycle and its column encoding.
pub trait StateColumn:
    Lifecycle
    + Unpin
    + for<'q> sqlx::Encode<'q, sqlx::Postgres>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
    + PgHasArrayType
{
}
impl<S> StateColumn for S where
    S: Lifecycle
        + Unpin
        + for<'q> sqlx::Encode<'q, sqlx::Postgres>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + PgHasArrayType
{
}

/// One move of a state column: to `to`, from any of the domain's sources of `to`. The only way
/// a query changes a state: bound with [`BindMove::bind_move`] as two parameters, written
/// `SET state = $n ... WHERE ... AND state = ANY($n+1)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move<S> {
    pub to: S,
    pub from: Vec<S>,
}

/// The move to `next` that the domain allows.
pub fn move_to<S: StateColumn>(next: S) -> Move<S> {
    Move {
        to: next,
        from: S::sources(next),
    }
}

/// Binds a [`Move`] as its next two parameters: the target state, then the states it may leave.
pub trait BindMove: Sized {
    fn bind_move<S: StateColumn>(self, m: Move<S>) -> Self;
}

impl<'q> BindMove for Query<'q, sqlx::Postgres, PgArguments> {
    fn bind_move<S: StateColumn>(self, m: Move<S>) -> Self {
        self.bind(m.to).bind(m.from)
    }
}

impl<'q, O> BindMove for QueryAs<'q, sqlx::Postgres, O, PgArguments> {
    fn bind_move<S: StateColumn>(self, m: Move<S>) -> Self {
        self.bind(m.to).bind(m.from)
    }
}

impl<'q, O> BindMove for QueryScalar<'q, sqlx::Postgres, O, PgArguments> {
    fn bind_move<S: StateColumn>(self, m: Move<S>) -> Self {
        self.bind(m.to).bind(m.from)
    }
}

/// A duration as PostgreSQL's `make_interval(secs => ...)` takes it.
pub(crate) fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}
