//! The transcode worker: takes a task, runs the media engine off the async runtime under a
//! deadline, stores the renditions, and records the result before acking.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::messages::queue;
use vtx_domain::{ErrorCode, JobId, Task, VideoId, plan_ladder};
use vtx_infra::ObjectStore;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::WorkerConfig;
use vtx_infra::db::{self, ClaimedJob, NewRendition, SourceFacts};
use vtx_infra::storage::StorageError;
use vtx_media::{Deadline, Limits, MediaError, Preset, RenditionOutput, TranscodeRequest};

#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    store: ObjectStore,
    cfg: WorkerConfig,
    limits: Limits,
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

impl Worker {
    pub fn new(pool: PgPool, store: ObjectStore, cfg: WorkerConfig) -> Self {
        let limits = Limits {
            max_duration: Duration::from_secs(cfg.max_source_seconds),
            ..Limits::default()
        };
        Self {
            inner: Arc::new(Inner {
                pool,
                store,
                cfg,
                limits,
                scratch: std::env::temp_dir(),
            }),
        }
    }

    /// Runs `concurrency` consumers until `shutdown`; each finishes the task it holds first.
    pub async fn run(self, broker: BrokerClient, shutdown: CancellationToken) {
        vtx_media::init();
        tracing::info!(
            concurrency = self.inner.cfg.concurrency,
            "worker consuming {}",
            queue::TRANSCODE
        );
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.inner.cfg.concurrency {
            let (me, broker, shutdown) = (self.clone(), broker.clone(), shutdown.clone());
            set.spawn(async move {
                consume(broker, queue::TRANSCODE, shutdown, |task| me.handle(task)).await;
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Handles one delivery. Idempotent: a finished job is acked and left alone.
    pub async fn handle(&self, task: Task) -> Outcome {
        let Task::Transcode { job_id } = task else {
            tracing::error!(?task, "worker got a task for another queue; dropping it");
            return Outcome::Ack;
        };
        let claim = match db::claim_job(&self.inner.pool, job_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::info!(%job_id, "job already finished; duplicate delivery ignored");
                return Outcome::Ack;
            }
            Err(e) => {
                tracing::warn!(%job_id, error = %e, "could not claim job; will retry");
                return Outcome::Retry;
            }
        };
        let attempts = claim.attempts.max(0) as u32;
        if attempts > self.inner.cfg.max_attempts {
            return self
                .fail(
                    job_id,
                    ErrorCode::RetriesExhausted,
                    &format!("gave up after {} attempts", attempts - 1),
                )
                .await;
        }
        let span = tracing::info_span!("transcode", %job_id, video_id = %claim.video_id, attempt = attempts);
        let started = std::time::Instant::now();
        match self.transcode(job_id, &claim).instrument(span).await {
            Ok(()) => {
                tracing::info!(%job_id, secs = started.elapsed().as_secs_f64(), "job succeeded");
                Outcome::Ack
            }
            Err(e) if e.is_final() => self.fail(job_id, e.code(), &e.to_string()).await,
            Err(e) if attempts >= self.inner.cfg.max_attempts => {
                let msg = format!("gave up after {attempts} attempts: {e}");
                self.fail(job_id, ErrorCode::RetriesExhausted, &msg).await
            }
            Err(e) => {
                tracing::warn!(%job_id, attempt = attempts, error = %e, "transcode failed; will retry");
                Outcome::Retry
            }
        }
    }

    async fn fail(&self, job_id: JobId, code: ErrorCode, message: &str) -> Outcome {
        tracing::warn!(%job_id, %code, message, "job failed");
        match db::fail_job(&self.inner.pool, job_id, code, message).await {
            Ok(_) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(%job_id, error = %e, "could not record the failure; will retry");
                Outcome::Retry
            }
        }
    }

    async fn transcode(&self, job_id: JobId, claim: &ClaimedJob) -> Result<(), WorkError> {
        let inner = &self.inner;
        let video_id = VideoId::from_uuid(claim.video_id);
        // Removed on drop, whatever happens below.
        let scratch = tempfile::Builder::new()
            .prefix("vtx-job-")
            .tempdir_in(&inner.scratch)
            .map_err(|e| WorkError::Internal(format!("scratch dir: {e}")))?;
        let source = scratch.path().join("source");
        inner.store.download_to(&claim.source_key, &source).await?;

        let timeout = inner.cfg.transcode_timeout;
        let limits = inner.limits.clone();
        let dir = scratch.path().to_path_buf();
        let span = tracing::Span::current();
        let work = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let deadline = Deadline::after(timeout);
            let probe = vtx_media::probe(&source, &limits, deadline)?;
            let outputs = plan_ladder(probe.video.width, probe.video.height)
                .into_iter()
                .map(|rung| RenditionOutput {
                    path: dir.join(format!("{}.mp4", rung.name)),
                    rung,
                })
                .collect();
            let reports = vtx_media::transcode_ladder(&TranscodeRequest {
                input: source,
                outputs,
                preset: Preset::Fast,
                gop_seconds: 2.0,
                deadline,
            })?;
            Ok::<_, MediaError>((probe, reports))
        });
        // The deadline inside stops the work; this outer bound only guards against a hang in FFmpeg.
        let (probe, reports) = tokio::time::timeout(timeout + Duration::from_secs(30), work)
            .await
            .map_err(|_| WorkError::Media(MediaError::Timeout))?
            .map_err(|e| WorkError::Internal(format!("transcode thread: {e}")))??;

        let mut renditions = Vec::with_capacity(reports.len());
        for r in &reports {
            // Versioned by job: a later tier writes beside, never over, what viewers fetch now.
            let key = format!("videos/{video_id}/{job_id}/{}.mp4", r.name);
            inner.store.put_file(&key, &r.path, "video/mp4").await?;
            renditions.push(NewRendition {
                name: r.name.clone(),
                object_key: key,
                width: r.width,
                height: r.height,
                frames: r.frames,
                duration_ms: (r.duration_seconds * 1000.0).round() as u64,
                size_bytes: r.bytes,
                bitrate: r.bitrate,
            });
        }
        let facts = SourceFacts {
            width: probe.video.width,
            height: probe.video.height,
            frames: probe.video.frames,
            duration_ms: (probe.video.duration_seconds * 1000.0).round() as u64,
        };
        if !db::finish_job(&inner.pool, job_id, video_id, &facts, &renditions).await? {
            tracing::info!(%job_id, "job finished elsewhere meanwhile; keeping that result");
            for r in &renditions {
                let _ = inner.store.delete(&r.object_key).await;
            }
        }
        Ok(())
    }
}
