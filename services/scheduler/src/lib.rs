//! The scheduler: plans each new job (probe, slices on the GOP index, audio once), stores the
//! slices, records the plan and queues the first tier's slices, all before acking. It also runs
//! the housekeeping no single worker can: re-queuing slices whose worker vanished and deleting
//! objects nobody needs any more.

use std::path::PathBuf;
pub mod hotness;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vtx_domain::messages::queue;
use vtx_domain::slicing::slice_seconds_for;
use vtx_domain::{JobId, JobState, Task, keys};
use vtx_infra::broker::{BrokerClient, Outcome, consume};
use vtx_infra::config::{PipelineConfig, WorkerConfig};
use vtx_infra::{ObjectStore, db};
use vtx_media::{Deadline, Limits, MediaError, prepare};

/// What planning a job leaves to record.
struct Planned {
    plan: vtx_domain::JobPlan,
    audio_key: Option<String>,
    concealed_audio_frames: u64,
}

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
        consume(
            self.inner.broker.clone(),
            queue::JOBS,
            1,
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
        self.plan(job_id).instrument(span).await
    }

    async fn plan(&self, job: JobId) -> Outcome {
        let inner = &self.inner;
        let db::JobSource {
            video,
            state,
            source_key,
            declared_rotation,
            kind,
        } = match db::job_source(&inner.pool, job).await {
            Ok(Some(row)) => row,
            Ok(None) => return Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job; will retry");
                return Outcome::Retry;
            }
        };
        if state != JobState::Queued {
            return Outcome::Ack;
        }
        let attempts = match db::count_plan_attempt(&inner.pool, job).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the attempt; will retry");
                return Outcome::Retry;
            }
        };
        let started = std::time::Instant::now();
        // A pipelined job's fast tier came from its upload's chunks and is live already: the
        // source is assembled from the chunks now, and only the later tiers are planned.
        let chunks = match db::pipelined_chunk_keys(&inner.pool, job).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job's chunks; will retry");
                return Outcome::Retry;
            }
        };
        // An extreme job runs the extreme tier alone, beside the video's live renditions.
        let tiers: Vec<vtx_domain::Tier> = if kind == vtx_domain::JobKind::Extreme {
            vec![vtx_domain::Tier::Extreme]
        } else {
            inner
                .pipeline
                .tiers
                .iter()
                .copied()
                .filter(|t| chunks.is_none() || *t != vtx_domain::Tier::Fast)
                .collect()
        };
        if tiers.is_empty() {
            return Outcome::Ack;
        }
        match self
            .prepare_and_store(job, &source_key, chunks.as_ref().map(|c| c.1.as_slice()))
            .await
        {
            Ok(mut planned) => match db::record_plan(
                &inner.pool,
                job,
                {
                    apply_declared_rotation(&mut planned.plan, declared_rotation);
                    &planned.plan
                },
                planned.audio_key.as_deref(),
                planned.concealed_audio_frames,
                &tiers,
            )
            .await
            {
                Ok(_) => {
                    if let Some((upload, _)) = &chunks
                        && let Err(e) = db::forget_chunks(&inner.pool, *upload).await
                    {
                        tracing::warn!(error = %e, "could not schedule the chunks' deletion");
                    }
                    metrics::counter!("vtx_jobs_planned_total").increment(1);
                    tracing::info!(%video, slices = planned.plan.slices.len(), secs = started.elapsed().as_secs_f64(), "job planned");
                    Outcome::Ack
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the plan; will retry");
                    Outcome::Retry
                }
            },
            Err(PlanError::Media(e))
                if e.code().is_input_fault()
                    || e.code() == vtx_domain::ErrorCode::TranscodeTimeout =>
            {
                tracing::info!(code = %e.code(), error = %e, "source refused");
                metrics::counter!("vtx_failures_total", "code" => e.code().as_str()).increment(1);
                match db::fail_job(&inner.pool, job, e.code(), &e.to_string()).await {
                    Ok(_) => Outcome::Ack,
                    Err(_) => Outcome::Retry,
                }
            }
            Err(e) if attempts >= inner.max_attempts => {
                let msg = format!("planning gave up after {attempts} attempts: {e}");
                tracing::warn!(message = %msg, "giving up");
                metrics::counter!("vtx_failures_total", "code" => "retries-exhausted").increment(1);
                match db::fail_job(
                    &inner.pool,
                    job,
                    vtx_domain::ErrorCode::RetriesExhausted,
                    &msg,
                )
                .await
                {
                    Ok(_) => Outcome::DeadLetter,
                    Err(_) => Outcome::Retry,
                }
            }
            Err(e) => {
                tracing::warn!(attempt = attempts, error = %e, "planning failed; will retry");
                Outcome::Retry
            }
        }
    }

    /// Downloads the source (assembling it first from a pipelined upload's `chunks`), prepares
    /// it off the async runtime, and uploads slices and audio.
    async fn prepare_and_store(
        &self,
        job: JobId,
        source_key: &str,
        chunks: Option<&[String]>,
    ) -> Result<Planned, PlanError> {
        let inner = &self.inner;
        if let Some(chunks) = chunks {
            inner
                .store
                .concat(chunks, source_key, "application/octet-stream")
                .await?;
        }
        let scratch = tempfile::Builder::new()
            .prefix("vtx-plan-")
            .tempdir_in(&inner.scratch)?;
        let source = scratch.path().join("source");
        inner.store.download_to(source_key, &source).await?;
        let workers = match inner.broker.get().await {
            Ok(b) => b
                .queue_stats(queue::FAST_SLICES)
                .await
                .map(|(_, consumers)| consumers)
                .unwrap_or(1),
            Err(_) => 1,
        };
        let policy = inner.pipeline.clone();
        let damage = inner.damage;
        let (limits, timeout, work) = (
            inner.limits.clone(),
            inner.timeout,
            scratch.path().to_path_buf(),
        );
        let prepared = tokio::task::spawn_blocking(move || {
            let slice_seconds = move |p: &vtx_media::Probe| {
                if policy.slice_seconds > 0.0 {
                    policy.slice_seconds
                } else {
                    slice_seconds_for(
                        p.video.duration_seconds,
                        workers.max(1),
                        policy.min_slice_seconds,
                        policy.max_slice_seconds,
                    )
                }
            };
            prepare(
                &source,
                &work,
                &slice_seconds,
                &limits,
                damage,
                Deadline::after(timeout),
            )
        })
        .await
        .map_err(|e| PlanError::Other(format!("planning thread: {e}")))??;
        for s in &prepared.slices {
            inner
                .store
                .put_file(&keys::slice(job, s.window.index), &s.path, "video/mp4")
                .await?;
        }
        let audio_key = match &prepared.audio {
            Some(path) => {
                let key = keys::audio(job);
                inner.store.put_file(&key, path, "audio/mp4").await?;
                Some(key)
            }
            None => None,
        };
        Ok(Planned {
            plan: prepared.plan,
            audio_key,
            concealed_audio_frames: prepared.concealed_audio_frames,
        })
    }

    /// Every few seconds: slices whose lease expired go back to the queue; due garbage goes.
    async fn housekeeping(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
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

/// A rotation the upload declared (its MPEG-TS chunks could not carry the source's) applies when
/// the source itself says none: the displayed size turns with it.
fn apply_declared_rotation(plan: &mut vtx_domain::JobPlan, declared: Option<u32>) {
    if let Some(r) = declared.filter(|r| *r != 0)
        && plan.rotation == 0
    {
        plan.rotation = r;
        if r % 180 == 90 {
            std::mem::swap(&mut plan.display_width, &mut plan.display_height);
        }
    }
}

#[derive(Debug)]
enum PlanError {
    Media(MediaError),
    Storage(vtx_infra::storage::StorageError),
    Other(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Media(e) => e.fmt(f),
            PlanError::Storage(e) => e.fmt(f),
            PlanError::Other(e) => f.write_str(e),
        }
    }
}

impl From<MediaError> for PlanError {
    fn from(e: MediaError) -> Self {
        PlanError::Media(e)
    }
}

impl From<vtx_infra::storage::StorageError> for PlanError {
    fn from(e: vtx_infra::storage::StorageError) -> Self {
        PlanError::Storage(e)
    }
}

impl From<std::io::Error> for PlanError {
    fn from(e: std::io::Error) -> Self {
        PlanError::Other(e.to_string())
    }
}
