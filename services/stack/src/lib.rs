//! The one composition root. [`Stack::start`] builds vtx's services from a [`Config`] and the
//! [`Roles`] a process plays: the `vtx` binary (one role per command, or all for `vtx up`), the
//! benches and the tests all start them here, so a new background task is added in one place.

use std::net::SocketAddr;

use anyhow::Context;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vtx_infra::broker::BrokerClient;
use vtx_infra::{Config, ObjectStore, db, outbox};
use vtx_worker::Worker;

/// What a process runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Roles {
    /// The upload gateway and status API.
    pub gateway: bool,
    /// Job planning, lease reaping and garbage collection.
    pub scheduler: bool,
    /// Transcoding: slices, chunk encodes, merges, extreme encodes.
    pub worker: bool,
    /// The hotness tracker (top-x plays -> extreme encodes).
    pub hotness: bool,
    /// Serve `/metrics` on `VTX_METRICS_ADDR` (the gateway serves it on its own address).
    pub metrics_server: bool,
}

impl Roles {
    /// Everything, as `vtx up` runs it.
    pub fn all() -> Self {
        Self {
            gateway: true,
            scheduler: true,
            worker: true,
            hotness: true,
            metrics_server: false,
        }
    }
}

/// The connections every role shares.
#[derive(Clone)]
pub struct Resources {
    pub pool: PgPool,
    pub store: ObjectStore,
    pub broker: BrokerClient,
}

impl Resources {
    /// Connects to PostgreSQL (`cfg`'s database) and sets up the S3 and RabbitMQ clients.
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let pool = db::connect(cfg).await.context("connecting to PostgreSQL")?;
        Ok(Self::with_pool(cfg, pool))
    }

    /// The S3 and RabbitMQ clients of `cfg`, beside a pool made elsewhere (a test's database).
    pub fn with_pool(cfg: &Config, pool: PgPool) -> Self {
        Self {
            pool,
            store: ObjectStore::new(&cfg.s3, &cfg.tls_roots),
            broker: BrokerClient::new(
                cfg.amqp_url.clone(),
                cfg.queue_prefix.clone(),
                cfg.tls_roots.clone(),
            ),
        }
    }

    /// Applies the migrations, creates the bucket and declares the queues.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        db::migrate(&self.pool)
            .await
            .context("applying migrations")?;
        self.store
            .ensure_bucket()
            .await
            .context("creating the bucket (is the S3 server up?)")?;
        self.broker
            .check()
            .await
            .context("declaring queues (is RabbitMQ up?)")?;
        Ok(())
    }
}

/// Running services, stopped together.
pub struct Stack {
    pub resources: Resources,
    /// The in-process worker, when the process plays that role.
    pub worker: Option<Worker>,
    gateway_url: Option<String>,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Stack {
    /// Starts `roles` on `resources`.
    pub async fn start(cfg: &Config, resources: Resources, roles: Roles) -> anyhow::Result<Self> {
        let Resources {
            pool,
            store,
            broker,
        } = resources.clone();
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // Every service process samples queue depths for its /metrics.
        tasks.spawn(vtx_infra::metrics::sample_queues(
            broker.clone(),
            shutdown.clone(),
        ));
        let metrics_addr = if roles.metrics_server {
            let deps = vtx_infra::health::Dependencies {
                pool: pool.clone(),
                broker: broker.clone(),
                store: store.clone(),
            };
            let addr = vtx_infra::metrics::serve(cfg.metrics_addr, deps, shutdown.clone()).await?;
            tracing::info!(%addr, "/metrics, /healthz and /readyz");
            Some(addr)
        } else {
            None
        };
        if roles.gateway || roles.scheduler {
            // Whoever writes the outbox relays it.
            tasks.spawn(outbox::run_relay(
                pool.clone(),
                broker.clone(),
                shutdown.clone(),
            ));
        }
        if roles.scheduler {
            let s = vtx_scheduler::Scheduler::new(
                pool.clone(),
                store.clone(),
                broker.clone(),
                cfg.pipeline.clone(),
                &cfg.worker,
            );
            tasks.spawn(s.run(shutdown.clone()));
        }
        let worker = roles.worker.then(|| {
            Worker::new(
                pool.clone(),
                store.clone(),
                cfg.worker.clone(),
                cfg.pipeline.clone(),
                cfg.hotness.clone(),
            )
        });
        if let Some(w) = &worker {
            tasks.spawn(w.clone().run(broker.clone(), shutdown.clone()));
        }
        if roles.hotness {
            let t = vtx_hotness::Tracker::new(pool.clone(), broker.clone(), cfg.hotness.clone());
            tasks.spawn(t.run(shutdown.clone()));
        }
        let mut gateway_url = None;
        if roles.gateway {
            let gw = vtx_gateway::Gateway::build(cfg, pool, store, broker).await?;
            gateway_url = Some(gw.public_url().to_string());
            let token = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = gw.run_until(token).await {
                    tracing::error!(error = %e, "gateway stopped");
                }
            });
        }
        Ok(Self {
            resources,
            worker,
            gateway_url,
            metrics_addr,
            shutdown,
            tasks,
        })
    }

    /// The gateway's base URL, when this stack runs one.
    pub fn gateway_url(&self) -> Option<&str> {
        self.gateway_url.as_deref()
    }

    /// Where `/metrics` is served, when this stack serves it apart from the gateway.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Cancelled when the stack stops.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every service and waits until each has finished its work in flight.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
