//! The transcode worker: takes a task, runs the media engine off the async runtime under a
//! deadline, stores the renditions, and records the result before acking.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::messages::queue;
use vtx_domain::{ErrorCode, JobId, Task, VideoId};
use vtx_infra::ObjectStore;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::WorkerConfig;
use vtx_infra::db::{self, ClaimedJob, NewRendition, SourceFacts};
use vtx_infra::storage::StorageError;
use vtx_media::{Deadline, Limits, MediaError, PipelineRequest, Tier, run_pipeline};

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
        let mut req = PipelineRequest::new(source, scratch.path().join("out"));
        req.tier = Tier::Fast;
        req.limits = inner.limits.clone();
        req.deadline = Deadline::after(timeout);
        // Publish latency matters more than a quality report on the fast tier.
        req.quality = false;
        let span = tracing::Span::current();
        let out_dir = req.out_dir.clone();
        let work = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            run_pipeline(&req)
        });
        // The deadline inside stops the work; this outer bound only guards against a hang in FFmpeg.
        let manifest = tokio::time::timeout(timeout + Duration::from_secs(30), work)
            .await
            .map_err(|_| WorkError::Media(MediaError::Timeout))?
            .map_err(|e| WorkError::Internal(format!("transcode thread: {e}")))??;

        // Versioned by job: a later tier writes beside, never over, what viewers fetch now.
        let prefix = format!("videos/{video_id}/{job_id}");
        upload_tree(&inner.store, &out_dir, &prefix).await?;
        let renditions: Vec<NewRendition> = manifest
            .renditions
            .iter()
            .map(|r| NewRendition {
                name: r.name.clone(),
                codec: r.codec.label().to_string(),
                codec_string: r.codec_string.clone(),
                object_key: format!("{prefix}/{}", r.file),
                hls_playlist_key: r.hls_playlist.as_ref().map(|p| format!("{prefix}/{p}")),
                width: r.width,
                height: r.height,
                frames: r.frames,
                duration_ms: (r.duration * 1000.0).round() as u64,
                size_bytes: r.bytes,
                bitrate: r.bitrate,
                prefetch_bytes_3s: r.prefetch_bytes_3s,
                psnr: r.psnr,
                ssim: r.ssim,
            })
            .collect();
        let probe = &manifest.source;
        let facts = SourceFacts {
            width: probe.video.display_width,
            height: probe.video.display_height,
            frames: probe.video.frames,
            duration_ms: (probe.video.duration_seconds * 1000.0).round() as u64,
            hls_master_key: manifest
                .hls_master
                .as_ref()
                .map(|m| format!("{prefix}/{m}")),
            cover_key: manifest.cover.as_ref().map(|c| format!("{prefix}/{c}")),
        };
        if !db::finish_job(&inner.pool, job_id, video_id, &facts, &renditions).await? {
            tracing::info!(%job_id, "job finished elsewhere meanwhile; keeping that result");
        }
        Ok(())
    }
}

/// Uploads every file under `dir` (but the pipeline's scratch) to `prefix/<relative path>`.
async fn upload_tree(store: &ObjectStore, dir: &Path, prefix: &str) -> Result<(), WorkError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&d)
            .await
            .map_err(|e| WorkError::Internal(e.to_string()))?;
        while let Some(e) = entries
            .next_entry()
            .await
            .map_err(|e| WorkError::Internal(e.to_string()))?
        {
            let path = e.path();
            let name = e.file_name();
            if name.to_string_lossy().starts_with(".vtx-work") {
                continue;
            }
            if e.file_type()
                .await
                .map_err(|e| WorkError::Internal(e.to_string()))?
                .is_dir()
            {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            store
                .put_file(&format!("{prefix}/{rel}"), &path, content_type(&rel))
                .await?;
        }
    }
    Ok(())
}

/// Content type by file name, for what the pipeline writes.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("jpg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
