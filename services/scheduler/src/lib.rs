//! The scheduler: plans each new job (probe, slices on the GOP index, audio once), stores the
//! slices, records the plan and queues the first tier's slices, all before acking. It also runs
//! the housekeeping no single worker can: re-queuing slices whose worker vanished and deleting
//! objects nobody needs any more.

mod planning;

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::Task;
use vtx_domain::messages::queue;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::{PipelineConfig, WorkerConfig};
use vtx_infra::driver;
use vtx_infra::{ObjectStore, db};
use vtx_media::Limits;

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    store: ObjectStore,
    broker: BrokerClient,
    pipeline: PipelineConfig,
    limits: Limits,
    damage: vtx_domain::damage::DamagePolicy,
    timeout: Duration,
    max_attempts: u32,
    scratch: PathBuf,
}

impl Scheduler {
    pub fn new(
        pool: PgPool,
        store: ObjectStore,
        broker: BrokerClient,
        pipeline: PipelineConfig,
        worker: &WorkerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                store,
                broker,
                pipeline,
                limits: Limits {
                    max_duration: Duration::from_secs(worker.max_source_seconds),
                    ..Limits::default()
                },
                damage: worker.damage,
                timeout: worker.transcode_timeout,
                max_attempts: worker.max_attempts,
                scratch: std::env::temp_dir(),
            }),
        }
    }

    /// Consumes new jobs and runs housekeeping until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("scheduler consuming {}", queue::JOBS);
        let housekeeping = tokio::spawn(self.clone().housekeeping(shutdown.clone()));
        let me = self.clone();
        // Planning runs under the transcode timeout.
        let allowance = self.inner.timeout + Duration::from_secs(300);
        consume(
            self.inner.broker.clone(),
            queue::JOBS,
            1,
            allowance,
            shutdown,
            |task| me.handle(task),
        )
        .await;
        let _ = housekeeping.await;
    }

    /// Handles one delivery. Idempotent: a job past `queued` is left alone.
    pub async fn handle(&self, task: Task) -> Outcome {
        let Task::JobCreated { job_id } = task else {
            tracing::error!(?task, "scheduler got a task for another queue");
            return Outcome::DeadLetter;
        };
        let span = tracing::info_span!("plan", %job_id);
        let task = planning::PlanTask {
            scheduler: self,
            job: job_id,
        };
        driver::drive(&task, self.policy()).instrument(span).await
    }

    /// The retry policy planning follows (the workers' own).
    fn policy(&self) -> driver::RetryPolicy {
        driver::RetryPolicy {
            max_attempts: self.inner.max_attempts,
        }
    }

    /// Every few seconds: slices whose lease expired go back to the queue; due garbage goes.
    async fn housekeeping(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        // Each sweep is a few bounded queries (the pool gives up on a connection after 10 s).
        let beat = vtx_infra::health::watch("housekeeping", Duration::from_secs(300));
        let mut round = 0u64;
        loop {
            beat.beat();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            round += 1;
            if round.is_multiple_of(5) {
                match db::oldest_waiting(&inner.pool).await {
                    Ok(ages) => {
                        for (q, age) in ages {
                            metrics::gauge!("vtx_queue_oldest_seconds", "queue" => q)
                                .set(age.as_secs_f64());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "measuring queue ages failed"),
                }
            }
            match db::reap_expired_leases(&inner.pool).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(slices = n, "re-queued slices whose worker vanished"),
                Err(e) => tracing::warn!(error = %e, "lease reaper failed"),
            }
            match db::reap_expired_chunk_encodes(&inner.pool).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(chunks = n, "re-queued chunk encodes whose worker vanished")
                }
                Err(e) => tracing::warn!(error = %e, "chunk lease reaper failed"),
            }
            // A merge takes far less than a transcode timeout; three of them is abandonment.
            match db::fail_stale_merges(&inner.pool, inner.timeout * 3).await {
                Ok(jobs) if !jobs.is_empty() => {
                    tracing::warn!(?jobs, "failed tiers whose merge never finished");
                    metrics::counter!("vtx_failures_total", "code" => "retries-exhausted")
                        .increment(jobs.len() as u64);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "stale merge sweep failed"),
            }
            match db::expire_uploads(&inner.pool, 100).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "expired abandoned uploads"),
                Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
            }
            if let Ok(due) = db::due_garbage(&inner.pool, 20).await {
                for (id, prefix) in due {
                    match inner.store.delete_prefix(&prefix).await {
                        Ok(n) => {
                            tracing::info!(prefix, objects = n, "garbage collected");
                            let _ = db::forget_garbage(&inner.pool, id).await;
                        }
                        Err(e) => tracing::warn!(prefix, error = %e, "garbage collection failed"),
                    }
                }
            }
        }
    }
}
