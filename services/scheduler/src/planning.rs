//! Planning a job, run by the driver: the source (assembled first from a live-ingest upload's
//! chunks) is probed and cut into slices on its GOP index, the audio is encoded once, both are
//! stored, and the plan is recorded with the first tier's slices queued.

use vtx_domain::messages::queue;
use vtx_domain::slicing::slice_seconds_for;
use vtx_domain::{ErrorCode, JobId, JobKind, JobState, Tier, UploadId, keys};
use vtx_infra::db;
use vtx_infra::driver::{Failure, LeasedTask};
use vtx_media::{Deadline, MediaError, prepare};

use crate::Scheduler;

pub(crate) struct PlanTask<'a> {
    pub scheduler: &'a Scheduler,
    pub job: JobId,
}

/// A job to plan, as claimed.
pub(crate) struct ToPlan {
    source: db::JobSource,
    attempts: u32,
    /// A live-ingest job's upload and chunk objects: its fast tier is live already, so the
    /// source is assembled from the chunks and only the later tiers are planned.
    chunks: Option<(UploadId, Vec<String>)>,
    tiers: Vec<Tier>,
}

/// What planning a job leaves to record.
pub(crate) struct Planned {
    plan: vtx_domain::JobPlan,
    audio_key: Option<String>,
    concealed_audio_frames: u64,
    started: std::time::Instant,
    /// The experiment and arm the video was assigned to, recorded with the plan.
    arm: Option<(uuid::Uuid, String)>,
}

impl LeasedTask for PlanTask<'_> {
    type Claim = ToPlan;
    type Done = Planned;

    fn what(&self) -> String {
        "planning".to_string()
    }

    /// Idempotent: a job past `queued` is left alone.
    async fn claim(&self) -> sqlx::Result<Option<ToPlan>> {
        let inner = &self.scheduler.inner;
        let Some(source) = db::job_source(&inner.pool, self.job).await? else {
            return Ok(None);
        };
        if source.state != JobState::Queued {
            return Ok(None);
        }
        let chunks = db::live_ingest_chunk_keys(&inner.pool, self.job).await?;
        // An extreme job runs the extreme tier alone, beside the video's live renditions.
        let tiers: Vec<Tier> = if source.kind == JobKind::Extreme {
            vec![Tier::Extreme]
        } else {
            inner
                .pipeline
                .tiers
                .iter()
                .copied()
                .filter(|t| chunks.is_none() || *t != Tier::Fast)
                .collect()
        };
        if tiers.is_empty() {
            return Ok(None);
        }
        let attempts = db::count_plan_attempt(&inner.pool, self.job).await?;
        Ok(Some(ToPlan {
            source,
            attempts,
            chunks,
            tiers,
        }))
    }

    fn attempt(claim: &ToPlan) -> u32 {
        claim.attempts
    }

    async fn run(&self, claim: &ToPlan) -> Result<Planned, Failure> {
        let started = std::time::Instant::now();
        let chunks = claim.chunks.as_ref().map(|c| c.1.as_slice());
        match self
            .scheduler
            .prepare_and_store(self.job, &claim.source.source_key, chunks)
            .await
        {
            Ok(mut planned) => {
                apply_declared_rotation(&mut planned.plan, claim.source.declared_rotation);
                let pipeline = &self.scheduler.inner.pipeline;
                planned.plan.ladder.factor = pipeline.max_bitrate_factor;
                planned.plan.ladder.min_ratio = pipeline.rung_min_ratio;
                let (profile, arm) = db::experiments::profile_for(
                    &self.scheduler.inner.pool,
                    claim.source.video,
                    claim.source.kind != JobKind::Extreme,
                )
                .await
                .map_err(|e| Failure::Retryable(e.to_string()))?;
                planned.plan.profile = profile.target;
                planned.plan.psychovisual = profile.psychovisual;
                planned.arm = arm;
                planned.started = started;
                Ok(planned)
            }
            // The source's own fault (or one too slow to plan): running again cannot help.
            Err(PlanError::Media(e))
                if e.code().is_input_fault() || e.code() == ErrorCode::TranscodeTimeout =>
            {
                Err(Failure::Fatal {
                    code: e.code(),
                    message: e.to_string(),
                })
            }
            Err(e) => Err(Failure::Retryable(e.to_string())),
        }
    }

    async fn complete(&self, claim: &ToPlan, planned: Planned) -> sqlx::Result<()> {
        let inner = &self.scheduler.inner;
        db::record_plan(
            &inner.pool,
            self.job,
            &planned.plan,
            planned.audio_key.as_deref(),
            planned.concealed_audio_frames,
            &claim.tiers,
            planned
                .arm
                .as_ref()
                .map(|(experiment, arm)| (*experiment, claim.source.video, arm.as_str())),
        )
        .await?;
        if let Some((upload, _)) = &claim.chunks
            && let Err(e) = db::forget_chunks(&inner.pool, *upload).await
        {
            tracing::warn!(error = %e, "could not schedule the chunks' deletion");
        }
        metrics::counter!("vtx_jobs_planned_total").increment(1);
        tracing::info!(
            video = %claim.source.video,
            slices = planned.plan.slices.len(),
            secs = planned.started.elapsed().as_secs_f64(),
            "job planned"
        );
        Ok(())
    }

    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        db::fail_job(&self.scheduler.inner.pool, self.job, code, message).await?;
        Ok(())
    }
}

impl Scheduler {
    /// Downloads the source (assembling it first from a live-ingest upload's `chunks`), prepares
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
            started: std::time::Instant::now(),
            arm: None,
        })
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
