//! A whole vtx (gateway, scheduler, worker, outbox relay) in the test process, on the real
//! PostgreSQL, RabbitMQ and S3 server, isolated per test: its own database (from
//! `#[sqlx::test]`), queue prefix, object key prefix and port.

use std::path::{Path, PathBuf};

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vtx_client::Client;
use vtx_infra::broker::BrokerClient;
use vtx_infra::{Config, ObjectStore, outbox};
use vtx_worker::Worker;

pub struct TestApp {
    pub client: Client,
    pub pool: PgPool,
    pub store: ObjectStore,
    pub broker: BrokerClient,
    pub worker: Worker,
    pub cfg: Config,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, |_| None).await
    }

    /// Starts the services with extra `VTX_*` settings from `overrides`.
    pub async fn spawn_with(pool: PgPool, overrides: impl Fn(&str) -> Option<String>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("VTX_TEST_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let queue_prefix = format!("test-{tag}");
        let key_prefix = format!("test-{tag}/");
        let cfg = Config::from_lookup(|k| {
            overrides(k).or_else(|| match k {
                "VTX_HTTP_ADDR" => Some("127.0.0.1:0".into()),
                "VTX_QUEUE_PREFIX" => Some(queue_prefix.clone()),
                "VTX_S3_PREFIX" => Some(key_prefix.clone()),
                _ => std::env::var(k).ok(),
            })
        })
        .expect("test configuration");

        let store = ObjectStore::new(&cfg.s3);
        store
            .ensure_bucket()
            .await
            .expect("S3 server up (run deploy/local/setup.sh)");
        let broker = BrokerClient::new(cfg.amqp_url.clone(), cfg.queue_prefix.clone());
        broker
            .check()
            .await
            .expect("RabbitMQ up (run deploy/local/setup.sh)");
        let worker = Worker::new(pool.clone(), store.clone(), cfg.worker.clone());

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(outbox::run_relay(
            pool.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(vtx_scheduler::run(
            pool.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(worker.clone().run(broker.clone(), shutdown.clone()));
        let gateway =
            vtx_gateway::Gateway::build(&cfg, pool.clone(), store.clone(), broker.clone())
                .await
                .expect("gateway binds");
        let client = Client::new(gateway.public_url());
        let token = shutdown.clone();
        tasks.spawn(async move {
            gateway.run_until(token).await.expect("gateway runs");
        });
        TestApp {
            client,
            pool,
            store,
            broker,
            worker,
            cfg,
            shutdown,
            tasks,
        }
    }

    /// Stops the services and deletes this test's queues.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Ok(b) = self.broker.get().await {
            let _ = b.delete_topology().await;
        }
    }
}

/// A sample clip from shared/media (or `VTX_MEDIA_DIR`).
pub fn media(name: &str) -> PathBuf {
    let dir = std::env::var_os("VTX_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/media"));
    let p = dir.join(name);
    assert!(p.exists(), "sample clip {} missing", p.display());
    p
}
