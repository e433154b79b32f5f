//! Merging a tier: its encoded slices packaged, verified against the plan, uploaded and put
//! live, run by the driver (no lease: the tier's state admits one merge at a time).

use std::time::Instant;

use vtx_domain::{ErrorCode, JobId, Tier};
use vtx_infra::db::{self, Publish, TierOutput, WorkContext};

use std::path::PathBuf;

use vtx_domain::keys;
use vtx_infra::db::NewRendition;
use vtx_media::{Deadline, encoded_slice_path, package, plan_outputs, verify_packaged};

use crate::{WorkError, Worker, run_blocking};
use vtx_infra::driver::{Failure, LeasedTask};

pub(crate) struct MergeTask<'a> {
    pub worker: &'a Worker,
    pub job: JobId,
    pub tier: Tier,
}

impl Worker {
    /// Packages a tier from its encoded slices, verifies it against the plan and uploads it.
    pub(crate) async fn merge(
        &self,
        job: JobId,
        tier: Tier,
        ctx: &WorkContext,
    ) -> Result<TierOutput, WorkError> {
        let (_scratch, out, packaged) = self.package_tier(job, tier, ctx).await?;
        let dest = keys::tier_output(ctx.video_id, job, tier);
        self.inner.store.put_tree(&out, &dest).await?;
        Ok(tier_output(&dest, &packaged))
    }

    /// Downloads a tier's encoded slices and the audio and packages them (MP4 + HLS + cover)
    /// in a scratch directory, verified against the plan: (scratch, output directory, result).
    pub(crate) async fn package_tier(
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
        for (_, _, name) in
            plan_outputs(tier, plan.display_width, plan.display_height, &plan.ladder)
        {
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

impl LeasedTask for MergeTask<'_> {
    type Claim = WorkContext;
    type Done = (TierOutput, Instant);

    fn what(&self) -> String {
        "merge".to_string()
    }

    async fn claim(&self) -> sqlx::Result<Option<WorkContext>> {
        db::claim_merge(&self.worker.inner.pool, self.job, self.tier).await
    }

    fn attempt(claim: &WorkContext) -> u32 {
        claim.attempts
    }

    async fn run(&self, ctx: &WorkContext) -> Result<Self::Done, Failure> {
        let inner = &self.worker.inner;
        let started = Instant::now();
        // Each slice concealed what it could not decode; too much of it over the whole source
        // means the source is corrupt, not damaged.
        let concealed = db::tier_concealed_frames(&inner.pool, self.job, self.tier)
            .await
            .map_err(|e| Failure::Retryable(format!("reading the concealed frames: {e}")))?;
        if let Err(why) = inner
            .cfg
            .damage
            .check_share("video", concealed, ctx.plan.frames)
        {
            return Err(Failure::Fatal {
                code: ErrorCode::CorruptStream,
                message: why,
            });
        }
        let output = self
            .worker
            .merge(self.job, self.tier, ctx)
            .await
            .map_err(crate::packaging_failure)?;
        Ok((output, started))
    }

    async fn complete(&self, ctx: &WorkContext, (output, started): Self::Done) -> sqlx::Result<()> {
        let inner = &self.worker.inner;
        let tier = self.tier;
        let next = inner
            .pipeline
            .tiers
            .iter()
            .skip_while(|t| **t != tier)
            .nth(1)
            .copied();
        let published = db::publish_tier(
            &inner.pool,
            self.job,
            tier,
            &output,
            next,
            inner.pipeline.swap_grace,
        )
        .await?;
        if published == Publish::Live {
            crate::went_live(&inner.pool, self.job, tier).await;
            tracing::info!(secs = started.elapsed().as_secs_f64(), next = ?next, "tier live");
            if tier == Tier::High {
                self.worker.predict_hot(ctx.video_id).await;
            }
        }
        Ok(())
    }

    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        db::fail_tier(&self.worker.inner.pool, self.job, self.tier, code, message).await
    }
}

/// What a packaged tier, uploaded under `dest`, puts live.
pub(crate) fn tier_output(dest: &str, packaged: &vtx_media::Packaged) -> TierOutput {
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
