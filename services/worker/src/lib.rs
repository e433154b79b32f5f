//! The worker: encodes slices and merges tiers. Each task is claimed in PostgreSQL first (a
//! lease for slices, renewed by a heartbeat), runs the media engine off the async runtime under
//! a deadline, uploads its outputs, and records the result before the delivery is acked.
//! Handling is idempotent per (job, tier, slice): duplicates and stale deliveries are acked
//! without work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::messages::queue;
use vtx_domain::{ErrorCode, JobId, Task, Tier, keys};
use vtx_infra::ObjectStore;
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::{HotnessConfig, PipelineConfig, WorkerConfig};
use vtx_infra::db::{self, NewRendition, Publish, SliceDone, TierOutput, WorkContext};
use vtx_infra::storage::StorageError;
mod extreme;
mod pipelined;

use vtx_media::{
    Deadline, EncodeOptions, MediaError, encode_slice, encoded_slice_path, package, plan_outputs,
    verify_packaged,
};

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
    #[error("the slice's lease was lost to another worker")]
    LeaseLost,
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for WorkError {
    fn from(e: std::io::Error) -> Self {
        WorkError::Internal(e.to_string())
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
        let classes = [
            ("fast", queue::FAST_SLICES, Some(Tier::Fast)),
            ("high", queue::HIGH_SLICES, Some(Tier::High)),
            ("extreme", queue::EXTREME_SLICES, Some(Tier::Extreme)),
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
        let mut set = tokio::task::JoinSet::new();
        for q in queues {
            let n = if q == queue::MERGE || q == queue::EXTREME_SLICES {
                1
            } else {
                self.inner.cfg.concurrency
            };
            for _ in 0..n {
                let (me, broker, shutdown) = (self.clone(), broker.clone(), shutdown.clone());
                set.spawn(async move {
                    consume(broker, q, 1, shutdown, |task| me.handle(task)).await;
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
                let outcome = self.mux_chunks(job_id).instrument(span).await;
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
        let inner = &self.inner;
        let lease = inner.cfg.lease;
        let ctx = match db::claim_slice(&inner.pool, job, tier, index, &inner.id, lease).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::debug!(
                    "slice done, held by a live lease, or its job ended: nothing to do"
                );
                return Outcome::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the slice; will retry");
                return Outcome::Retry;
            }
        };
        if ctx.attempts > inner.cfg.max_attempts {
            let msg = format!("slice {index} gave up after {} attempts", ctx.attempts - 1);
            return self.exhausted(job, tier, &msg).await;
        }
        // Renew the lease while the slice encodes; losing it stops the work.
        let lost = CancellationToken::new();
        let beat = {
            let (pool, owner) = (inner.pool.clone(), inner.id.clone());
            spawn_heartbeat(lease, lost.clone(), move || {
                let (pool, owner) = (pool.clone(), owner.clone());
                async move { db::heartbeat_slice(&pool, job, tier, index, &owner, lease).await }
            })
        };
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = self.encode(job, tier, index, &ctx) => r,
            _ = lost.cancelled() => Err(WorkError::LeaseLost),
        };
        beat.abort();
        match result {
            Ok(concealed) => {
                match db::complete_slice(&inner.pool, job, tier, index, &inner.id, concealed).await
                {
                    Ok(SliceDone::Counted { merge_queued }) => {
                        let secs = started.elapsed().as_secs_f64();
                        if let Some(w) = ctx.plan.slices.get(index as usize) {
                            let (a, b) = ctx.plan.window_in_slice(w);
                            let (tb, fr) = (ctx.plan.time_base, ctx.plan.frame_rate);
                            let frames = (b - a) as f64 * f64::from(tb.0) / f64::from(tb.1)
                                * f64::from(fr.0)
                                / f64::from(fr.1);
                            metrics::histogram!("vtx_encode_fps", "tier" => tier.as_str())
                                .record(frames / secs.max(1e-3));
                        }
                        tracing::info!(secs, merge_queued, "slice encoded");
                        Outcome::Ack
                    }
                    Ok(SliceDone::Duplicate) => Outcome::Ack,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record the slice; will retry");
                        Outcome::Retry
                    }
                }
            }
            Err(WorkError::LeaseLost) => {
                tracing::warn!("lease lost; another worker has the slice");
                Outcome::Ack
            }
            Err(e) if e.is_final() => {
                self.give_up(job, tier, e.code(), &e.to_string(), Outcome::Ack)
                    .await
            }
            Err(e) if ctx.attempts >= inner.cfg.max_attempts => {
                let msg = format!("slice {index} gave up after {} attempts: {e}", ctx.attempts);
                self.exhausted(job, tier, &msg).await
            }
            Err(e) => {
                tracing::warn!(attempt = ctx.attempts, error = %e, "slice failed; will retry");
                Outcome::Retry
            }
        }
    }

    /// Fails the tier (and so the job) for good, then settles the delivery as `then`.
    /// Gives up after the last allowed attempt: the tier fails with `retries-exhausted` and the
    /// message goes to the dead-letter queue.
    async fn exhausted(&self, job: JobId, tier: Tier, message: &str) -> Outcome {
        self.give_up(
            job,
            tier,
            ErrorCode::RetriesExhausted,
            message,
            Outcome::DeadLetter,
        )
        .await
    }

    async fn give_up(
        &self,
        job: JobId,
        tier: Tier,
        code: ErrorCode,
        message: &str,
        then: Outcome,
    ) -> Outcome {
        tracing::warn!(%code, message, "giving up");
        metrics::counter!("vtx_failures_total", "code" => code.as_str()).increment(1);
        match db::fail_tier(&self.inner.pool, job, tier, code, message).await {
            Ok(()) => then,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the failure; will retry");
                Outcome::Retry
            }
        }
    }

    async fn encode(
        &self,
        job: JobId,
        tier: Tier,
        index: u32,
        ctx: &WorkContext,
    ) -> Result<u64, WorkError> {
        let inner = &self.inner;
        let scratch = tempfile::Builder::new()
            .prefix("vtx-slice-")
            .tempdir_in(&inner.scratch)?;
        let input = scratch.path().join("slice.mp4");
        inner
            .store
            .download_to(&keys::slice(job, index), &input)
            .await?;
        let out = scratch.path().join("out");
        std::fs::create_dir_all(&out)?;
        let (plan, timeout, out_dir) = (ctx.plan.clone(), inner.cfg.transcode_timeout, out.clone());
        let options = EncodeOptions {
            h264_encoder: self.preferred_h264(),
            damage: inner.cfg.damage,
            ..EncodeOptions::default()
        };
        let span = tracing::Span::current();
        let work = move || {
            let _e = span.enter();
            encode_slice(
                &input,
                &plan,
                index,
                tier,
                &out_dir,
                &options,
                Deadline::after(timeout),
            )
        };
        // Extreme encodes only take the CPU the fast and high tiers leave.
        let done = if tier == Tier::Extreme {
            run_background(timeout, work).await?
        } else {
            run_blocking(timeout, work).await?
        };
        let prefix = keys::encoded(job, tier);
        for f in done.paths {
            let name = f
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            inner
                .store
                .put_file(&format!("{prefix}{name}"), &f, "video/mp4")
                .await?;
        }
        Ok(done.concealed_video_frames)
    }

    async fn handle_merge(&self, job: JobId, tier: Tier) -> Outcome {
        let inner = &self.inner;
        if tier == Tier::Fast {
            match db::is_pipelined(&inner.pool, job).await {
                Ok(true) => return self.publish_chunks(job).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the job; will retry");
                    return Outcome::Retry;
                }
            }
        }
        let ctx = match db::claim_merge(&inner.pool, job, tier).await {
            Ok(Some(c)) => c,
            Ok(None) => return Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the merge; will retry");
                return Outcome::Retry;
            }
        };
        if ctx.attempts > inner.cfg.max_attempts {
            let msg = format!("merge gave up after {} attempts", ctx.attempts - 1);
            return self.exhausted(job, tier, &msg).await;
        }
        let started = std::time::Instant::now();
        let next = inner
            .pipeline
            .tiers
            .iter()
            .skip_while(|t| **t != tier)
            .nth(1)
            .copied();
        if tier == Tier::Extreme {
            return self.handle_extreme_merge(job, &ctx).await;
        }
        // Each slice concealed what it could not decode; too much of it over the whole source
        // means the source is corrupt, not damaged.
        match db::tier_concealed_frames(&inner.pool, job, tier).await {
            Ok(n) => {
                if let Err(why) = inner.cfg.damage.check_share("video", n, ctx.plan.frames) {
                    return self
                        .give_up(job, tier, ErrorCode::CorruptStream, &why, Outcome::Ack)
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tier's concealed frames; will retry");
                return Outcome::Retry;
            }
        }
        let result = self.merge(job, tier, &ctx).await;
        let output = match result {
            Ok(o) => o,
            Err(WorkError::Media(e)) if matches!(e, MediaError::CorruptStream(_)) => {
                // The outputs do not match the source: never put them live.
                return self
                    .give_up(
                        job,
                        tier,
                        ErrorCode::VerificationFailed,
                        &e.to_string(),
                        Outcome::Ack,
                    )
                    .await;
            }
            Err(e) => {
                let n = ctx.attempts;
                if n >= inner.cfg.max_attempts {
                    let msg = format!("merge gave up after {n} attempts: {e}");
                    return self.exhausted(job, tier, &msg).await;
                }
                tracing::warn!(attempt = n, error = %e, "merge failed; will retry");
                return Outcome::Retry;
            }
        };
        match db::publish_tier(
            &inner.pool,
            job,
            tier,
            &output,
            next,
            inner.pipeline.swap_grace,
        )
        .await
        {
            Ok(Publish::Live) => {
                metrics::counter!("vtx_tiers_live_total", "tier" => tier.as_str()).increment(1);
                tracing::info!(secs = started.elapsed().as_secs_f64(), next = ?next, "tier live");
                if tier == Tier::High {
                    self.predict_hot(ctx.video_id).await;
                }
                Outcome::Ack
            }
            Ok(Publish::AlreadyDone) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish; will retry");
                Outcome::Retry
            }
        }
    }

    /// Packages a tier from its encoded slices, verifies it against the plan and uploads it.
    async fn merge(
        &self,
        job: JobId,
        tier: Tier,
        ctx: &WorkContext,
    ) -> Result<TierOutput, WorkError> {
        let (_scratch, out, packaged) = self.package_tier(job, tier, ctx).await?;
        let dest = keys::tier_output(ctx.video_id, job, tier);
        upload_tree(&self.inner.store, &out, &dest).await?;
        Ok(tier_output(&dest, &packaged))
    }

    /// Downloads a tier's encoded slices and the audio and packages them (MP4 + HLS + cover)
    /// in a scratch directory, verified against the plan: (scratch, output directory, result).
    async fn package_tier(
        &self,
        job: JobId,
        tier: Tier,
        ctx: &WorkContext,
    ) -> Result<(tempfile::TempDir, PathBuf, vtx_media::Packaged), WorkError> {
        let inner = &self.inner;
        let scratch = tempfile::Builder::new()
            .prefix("vtx-merge-")
            .tempdir_in(&inner.scratch)?;
        let encoded = scratch.path().join("encoded");
        std::fs::create_dir_all(&encoded)?;
        let plan = &ctx.plan;
        let prefix = keys::encoded(job, tier);
        for (_, _, name) in plan_outputs(tier, plan.display_width, plan.display_height) {
            for w in &plan.slices {
                let path = encoded_slice_path(&encoded, w.index, &name);
                let file = path
                    .file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned();
                inner
                    .store
                    .download_to(&format!("{prefix}{file}"), &path)
                    .await?;
            }
        }
        let audio = match &ctx.audio_key {
            Some(key) => {
                let p = scratch.path().join("audio.m4a");
                inner.store.download_to(key, &p).await?;
                Some(p)
            }
            None => None,
        };
        let out = scratch.path().join("out");
        let (plan2, out2, timeout) = (plan.clone(), out.clone(), inner.cfg.transcode_timeout);
        let span = tracing::Span::current();
        let packaged = run_blocking(timeout, move || {
            let _e = span.enter();
            let packaged = package(
                &plan2,
                tier,
                &encoded,
                audio.as_deref(),
                &out2,
                true,
                Deadline::after(timeout),
            )?;
            verify_packaged(&plan2, &packaged)?;
            Ok(packaged)
        })
        .await?;
        Ok((scratch, out, packaged))
    }
}

/// What a packaged tier, uploaded under `dest`, puts live.
fn tier_output(dest: &str, packaged: &vtx_media::Packaged) -> TierOutput {
    TierOutput {
        renditions: packaged
            .renditions
            .iter()
            .map(|r| NewRendition {
                name: r.name.clone(),
                container: "mp4",
                codec: r.codec.label().to_string(),
                codec_string: r.codec_string.clone(),
                object_key: format!("{dest}{}", r.file),
                hls_playlist_key: r.hls_playlist.as_ref().map(|p| format!("{dest}{p}")),
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
            .collect(),
        hls_master_key: packaged.hls_master.as_ref().map(|m| format!("{dest}{m}")),
        cover_key: packaged.cover.as_ref().map(|c| format!("{dest}{c}")),
    }
}

/// Renews a lease every third of it with `renew` until aborted; cancels `lost` when the lease
/// turns out to be someone else's.
fn spawn_heartbeat<F, Fut>(
    lease: Duration,
    lost: CancellationToken,
    renew: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = sqlx::Result<bool>> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            match renew().await {
                Ok(true) => {}
                Ok(false) => {
                    lost.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    })
}

/// Runs media work on the blocking pool. The deadline inside stops the work; the outer bound
/// only guards against a hang in FFmpeg.
async fn run_blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, MediaError> + Send + 'static,
) -> Result<T, WorkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = tx.send(f());
    });
    media_result(timeout, rx).await
}

/// Like `run_blocking`, on a thread of its own at the lowest CPU priority (background work:
/// the extreme tier), which the encoders' own threads inherit.
async fn run_background<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, MediaError> + Send + 'static,
) -> Result<T, WorkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    vtx_media::spawn_low_priority("vtx-background", move || {
        let _ = tx.send(f());
    })?;
    media_result(timeout, rx).await
}

/// What a media thread sent back, waited for at most 30 s past its own deadline.
async fn media_result<T>(
    timeout: Duration,
    rx: tokio::sync::oneshot::Receiver<Result<T, MediaError>>,
) -> Result<T, WorkError> {
    tokio::time::timeout(timeout + Duration::from_secs(30), rx)
        .await
        .map_err(|_| WorkError::Media(MediaError::Timeout))?
        .map_err(|_| WorkError::Internal("media thread ended without a result".into()))?
        .map_err(WorkError::Media)
}

/// Uploads every file under `dir` to `prefix` + its relative path, several at a time (a tier
/// has hundreds of small HLS segments).
async fn upload_tree(store: &ObjectStore, dir: &Path, prefix: &str) -> Result<(), WorkError> {
    use futures_util::{StreamExt, TryStreamExt};
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&d).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_type().await?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    futures_util::stream::iter(files)
        .map(|path| async move {
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            store
                .put_file(&format!("{prefix}{rel}"), &path, content_type(&rel))
                .await
                .map_err(WorkError::from)
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
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
