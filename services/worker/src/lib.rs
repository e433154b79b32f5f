//! The worker: encodes slices and merges tiers. Each task is claimed in PostgreSQL first (a
//! lease for slices, renewed by a heartbeat), runs the media engine off the async runtime under
//! a deadline, uploads its outputs, and records the result before the delivery is acked.
//! Handling is idempotent per (job, tier, slice): duplicates and stale deliveries are acked
//! without work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::messages::queue;
use vtx_domain::{ErrorCode, JobId, Task, Tier};
use vtx_infra::ObjectStore;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::{HotnessConfig, PipelineConfig, WorkerConfig};
use vtx_infra::db::{self};
use vtx_infra::driver::{self, Failure};
use vtx_infra::storage::StorageError;
mod extreme;
mod live_ingest;
mod media_work;
mod merges;
mod slices;

use media_work::{cpu_class, run_blocking, run_in};
pub use vtx_infra::storage::content_type;

use vtx_media::MediaError;

#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    store: ObjectStore,
    cfg: WorkerConfig,
    pipeline: PipelineConfig,
    hotness: HotnessConfig,
    id: String,
    /// H.264 encoders this machine opened, best first (always ends with libx264).
    encoders: Vec<String>,
    scratch: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum WorkError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("object store: {0}")]
    Storage(#[from] StorageError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for WorkError {
    fn from(e: std::io::Error) -> Self {
        WorkError::Internal(e.to_string())
    }
}

impl From<WorkError> for Failure {
    fn from(e: WorkError) -> Self {
        match e {
            e if e.is_final() => Failure::Fatal {
                code: e.code(),
                message: e.to_string(),
            },
            e => Failure::Retryable(e.to_string()),
        }
    }
}

/// A failure while packaging encoded media into a tier: outputs that do not match the source
/// are never put live (fatal); anything else may pass on another attempt, since packaging only
/// repackages what was encoded.
pub(crate) fn packaging_failure(e: WorkError) -> Failure {
    match e {
        WorkError::Media(e @ MediaError::CorruptStream(_)) => Failure::Fatal {
            code: ErrorCode::VerificationFailed,
            message: e.to_string(),
        },
        e => Failure::Retryable(e.to_string()),
    }
}

impl WorkError {
    /// The failure lies in the input (or it hit the deadline): running again cannot help.
    fn is_final(&self) -> bool {
        matches!(self, WorkError::Media(m) if m.code().is_input_fault() || m.code() == ErrorCode::TranscodeTimeout)
    }

    fn code(&self) -> ErrorCode {
        match self {
            WorkError::Media(m) => m.code(),
            _ => ErrorCode::Internal,
        }
    }
}

/// Counts a task in flight for as long as it lives.
struct InFlight(&'static str, Tier);

impl InFlight {
    fn new(kind: &'static str, tier: Tier) -> Self {
        metrics::gauge!("vtx_tasks_in_flight", "kind" => kind, "tier" => tier.as_str())
            .increment(1.0);
        Self(kind, tier)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("vtx_tasks_in_flight", "kind" => self.0, "tier" => self.1.as_str())
            .decrement(1.0);
    }
}

fn record_task(kind: &'static str, tier: Tier, started: std::time::Instant, outcome: &Outcome) {
    let outcome = match outcome {
        Outcome::Ack => "ack",
        Outcome::Retry => "retry",
        Outcome::DeadLetter => "dead_letter",
    };
    metrics::histogram!("vtx_task_seconds", "kind" => kind, "tier" => tier.as_str(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// A tier went live: counted, with the time since its job was created (its upload completed)
/// as `vtx_publish_seconds{tier}`.
async fn went_live(pool: &PgPool, job: JobId, tier: Tier) {
    metrics::counter!("vtx_tiers_live_total", "tier" => tier.as_str()).increment(1);
    match db::since_job_created(pool, job).await {
        Ok(age) => metrics::histogram!("vtx_publish_seconds", "tier" => tier.as_str())
            .record(age.as_secs_f64()),
        Err(e) => tracing::debug!(error = %e, "no publish latency for this tier"),
    }
}

impl Worker {
    /// Detects the encoders this machine can open and names the worker.
    pub fn new(
        pool: PgPool,
        store: ObjectStore,
        cfg: WorkerConfig,
        pipeline: PipelineConfig,
        hotness: HotnessConfig,
    ) -> Self {
        let encoders = vtx_media::detect_h264_encoders();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                store,
                cfg,
                pipeline,
                hotness,
                id,
                encoders,
                scratch: std::env::temp_dir(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// H.264 encoders detected at start-up, best first.
    pub fn encoders(&self) -> &[String] {
        &self.inner.encoders
    }

    /// The H.264 encoder slices will ask for: the configured one, else the best detected.
    fn preferred_h264(&self) -> Option<String> {
        self.inner
            .cfg
            .h264_encoder
            .clone()
            .or_else(|| self.inner.encoders.first().cloned())
    }

    /// The queues this worker consumes: the configured classes it can serve. A class whose
    /// software encoders do not open here (the extreme tier on an FFmpeg without libx265 or
    /// libsvtav1) is left to workers that can.
    pub fn queues(&self) -> Vec<&'static str> {
        // The merge class consumes the publishing merges apart from the others.
        let classes = [
            ("fast", queue::FAST_SLICES, Some(Tier::Fast)),
            ("high", queue::HIGH_SLICES, Some(Tier::High)),
            ("extreme", queue::EXTREME_SLICES, Some(Tier::Extreme)),
            ("merge", queue::FAST_MERGE, None),
            ("merge", queue::MERGE, None),
        ];
        classes
            .into_iter()
            .filter(|(name, _, _)| self.inner.cfg.queues.iter().any(|q| q == name))
            .filter(|(name, _, tier)| {
                let ok = tier.is_none_or(vtx_media::can_encode_tier);
                if !ok {
                    tracing::warn!(
                        class = name,
                        "cannot open this class's encoders: not consuming it"
                    );
                }
                ok
            })
            .map(|(_, q, _)| q)
            .collect()
    }

    /// Registers, then consumes until `shutdown`: fast slices, high slices (each `concurrency`
    /// consumers, so fast work never waits behind high work) and merges. Each consumer finishes
    /// the task it holds before stopping.
    pub async fn run(self, broker: BrokerClient, shutdown: CancellationToken) {
        let queues = self.queues();
        let host = self
            .inner
            .id
            .rsplitn(3, '-')
            .last()
            .unwrap_or("host")
            .to_string();
        let queue_names: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        if let Err(e) = db::register_worker(
            &self.inner.pool,
            &self.inner.id,
            &host,
            &self.inner.encoders,
            &queue_names,
        )
        .await
        {
            tracing::warn!(error = %e, "could not register the worker");
        }
        tracing::info!(worker = %self.inner.id, encoders = ?self.inner.encoders, concurrency = self.inner.cfg.concurrency, "worker consuming");
        // Every media step runs under the transcode timeout; retries back off at most 30 s. A
        // merge (an extreme merge packages, then measures) takes up to three steps' worth.
        let timeout = self.inner.cfg.transcode_timeout;
        let allowance_of = |q: &str| {
            let steps = if q == queue::MERGE || q == queue::FAST_MERGE {
                3
            } else {
                1
            };
            timeout * steps + Duration::from_secs(300)
        };
        let mut set = tokio::task::JoinSet::new();
        for q in queues {
            let n = if [queue::MERGE, queue::FAST_MERGE, queue::EXTREME_SLICES].contains(&q) {
                1
            } else {
                self.inner.cfg.concurrency
            };
            let allowance = allowance_of(q);
            for _ in 0..n {
                let (me, broker, shutdown) = (self.clone(), broker.clone(), shutdown.clone());
                set.spawn(async move {
                    consume(broker, q, 1, allowance, shutdown, |task| me.handle(task)).await;
                });
            }
        }
        while set.join_next().await.is_some() {}
        tracing::info!(worker = %self.inner.id, "worker stopped");
    }

    /// Handles one delivery.
    pub async fn handle(&self, task: Task) -> Outcome {
        match task {
            Task::EncodeSlice {
                job_id,
                tier,
                index,
            } => {
                let span = tracing::info_span!("slice", %job_id, %tier, index);
                let (_f, started) = (InFlight::new("slice", tier), std::time::Instant::now());
                let outcome = self
                    .handle_slice(job_id, tier, index)
                    .instrument(span)
                    .await;
                record_task("slice", tier, started, &outcome);
                outcome
            }
            Task::Merge { job_id, tier } => {
                let span = tracing::info_span!("merge", %job_id, %tier);
                let (_f, started) = (InFlight::new("merge", tier), std::time::Instant::now());
                let outcome = self.handle_merge(job_id, tier).instrument(span).await;
                record_task("merge", tier, started, &outcome);
                outcome
            }
            Task::MuxChunks { job_id } => {
                let span = tracing::info_span!("mux", %job_id);
                let (_f, started) = (InFlight::new("mux", Tier::Fast), std::time::Instant::now());
                let task = live_ingest::MuxChunksTask {
                    worker: self,
                    job: job_id,
                };
                let outcome = driver::drive(&task, self.policy()).instrument(span).await;
                record_task("mux", Tier::Fast, started, &outcome);
                outcome
            }
            Task::EncodeChunk { upload_id, index } => {
                let span = tracing::info_span!("chunk", %upload_id, index);
                let (_f, started) = (
                    InFlight::new("chunk", Tier::Fast),
                    std::time::Instant::now(),
                );
                let outcome = self.handle_chunk(upload_id, index).instrument(span).await;
                record_task("chunk", Tier::Fast, started, &outcome);
                outcome
            }
            other => {
                tracing::error!(task = ?other, "worker got a task for another queue");
                Outcome::DeadLetter
            }
        }
    }

    async fn handle_slice(&self, job: JobId, tier: Tier, index: u32) -> Outcome {
        let task = slices::SliceTask {
            worker: self,
            job,
            tier,
            index,
        };
        driver::drive(&task, self.policy()).await
    }

    /// The retry policy every task follows.
    fn policy(&self) -> driver::RetryPolicy {
        driver::RetryPolicy {
            max_attempts: self.inner.cfg.max_attempts,
        }
    }

    async fn handle_merge(&self, job: JobId, tier: Tier) -> Outcome {
        let inner = &self.inner;
        if tier == Tier::Fast {
            match db::is_live_ingest(&inner.pool, job).await {
                Ok(true) => {
                    let task = live_ingest::PublishChunksTask { worker: self, job };
                    return driver::drive(&task, self.policy()).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the job; will retry");
                    return Outcome::Retry;
                }
            }
        }
        if tier == Tier::Extreme {
            let task = extreme::ExtremeMergeTask { worker: self, job };
            return driver::drive(&task, self.policy()).await;
        }
        let task = merges::MergeTask {
            worker: self,
            job,
            tier,
        };
        driver::drive(&task, self.policy()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_errors_map_to_failures() {
        assert!(matches!(
            Failure::from(WorkError::Media(MediaError::Timeout)),
            Failure::Fatal {
                code: ErrorCode::TranscodeTimeout,
                ..
            }
        ));
        assert!(matches!(
            Failure::from(WorkError::Internal("disk full".into())),
            Failure::Retryable(_)
        ));
        assert!(matches!(
            packaging_failure(WorkError::Media(MediaError::CorruptStream("x".into()))),
            Failure::Fatal {
                code: ErrorCode::VerificationFailed,
                ..
            }
        ));
        assert!(matches!(
            packaging_failure(WorkError::Media(MediaError::Timeout)),
            Failure::Retryable(_)
        ));
    }
}
