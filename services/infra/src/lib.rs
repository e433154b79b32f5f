//! Adapters of vtx: everything that talks to the outside world lives here, behind small types
//! the services use. PostgreSQL is the truth; RabbitMQ carries small typed messages; S3 holds
//! the bytes.

pub mod broker;
pub mod config;
pub mod db;
pub mod driver;
pub mod health;
pub mod metrics;
pub mod outbox;
pub mod storage;
pub mod telemetry;

pub use broker::Broker;
pub use config::Config;
pub use storage::ObjectStore;
