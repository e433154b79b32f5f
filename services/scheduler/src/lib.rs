//! The scheduler: turns each new job into its transcode task. Planning (probe, GOP slices,
//! tiers) grows here with the distributed pipeline.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use vtx_domain::Task;
use vtx_domain::messages::queue;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::db;

/// Consumes new jobs until `shutdown`.
pub async fn run(pool: PgPool, broker: BrokerClient, shutdown: CancellationToken) {
    tracing::info!("scheduler consuming {}", queue::JOBS);
    consume(broker, queue::JOBS, shutdown, |task| handle(&pool, task)).await;
}

/// Handles one delivery. Idempotent: a job already past `queued` is left alone.
pub async fn handle(pool: &PgPool, task: Task) -> Outcome {
    let Task::JobCreated { job_id } = task else {
        tracing::error!(?task, "scheduler got a task for another queue; dropping it");
        return Outcome::Ack;
    };
    match db::schedule_job(pool, job_id).await {
        Ok(true) => {
            tracing::info!(%job_id, "job scheduled");
            Outcome::Ack
        }
        Ok(false) => {
            tracing::info!(%job_id, "job already scheduled; duplicate delivery ignored");
            Outcome::Ack
        }
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "could not schedule job; will retry");
            Outcome::Retry
        }
    }
}
