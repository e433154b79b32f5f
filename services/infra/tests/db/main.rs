//! The database layer on the real PostgreSQL (one database per test, made by `sqlx::test`).

mod completion;
mod experiments;
mod lifecycles;
mod webhooks;
