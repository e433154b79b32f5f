//! Slice encodes: one slice of a job's tier, under a lease, run by the driver.

use std::time::{Duration, Instant};

use vtx_domain::{ErrorCode, JobId, Tier};
use vtx_infra::db::{self, SliceDone, WorkContext};

use vtx_domain::keys;
use vtx_media::{Deadline, EncodeOptions, encode_slice};

use crate::{WorkError, Worker, cpu_class, run_in};
use vtx_infra::driver::{Failure, LeasedTask};

pub(crate) struct SliceTask<'a> {
    pub worker: &'a Worker,
    pub job: JobId,
    pub tier: Tier,
    pub index: u32,
}

/// An encoded slice: frames it concealed, and when its encode started.
pub(crate) struct Encoded {
    concealed: u64,
    started: Instant,
}

impl Worker {
    pub(crate) async fn encode(
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
            quality_target: inner.cfg.quality_target,
            psychovisual: inner.cfg.psychovisual,
            vmaf_tool: inner.cfg.vmaf_tool.clone(),
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
        // Fast work first: high encodes yield to it, extreme ones take only what is left.
        let done = run_in(cpu_class(tier), timeout, work).await?;
        for (name, choice) in &done.per_title {
            tracing::info!(
                slice = index,
                rendition = %name,
                crf = choice.crf,
                target = choice.target,
                tries = choice.probes.len(),
                "per-title rate factor"
            );
        }
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
}

impl LeasedTask for SliceTask<'_> {
    type Claim = WorkContext;
    type Done = Encoded;

    fn what(&self) -> String {
        format!("slice {}", self.index)
    }

    async fn claim(&self) -> sqlx::Result<Option<WorkContext>> {
        let inner = &self.worker.inner;
        db::claim_slice(
            &inner.pool,
            self.job,
            self.tier,
            self.index,
            &inner.id,
            inner.cfg.lease,
        )
        .await
    }

    fn attempt(claim: &WorkContext) -> u32 {
        claim.attempts
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.worker.inner.cfg.lease)
    }

    async fn renew(&self) -> sqlx::Result<bool> {
        let inner = &self.worker.inner;
        db::heartbeat_slice(
            &inner.pool,
            self.job,
            self.tier,
            self.index,
            &inner.id,
            inner.cfg.lease,
        )
        .await
    }

    async fn run(&self, ctx: &WorkContext) -> Result<Encoded, Failure> {
        let started = Instant::now();
        let concealed = self
            .worker
            .encode(self.job, self.tier, self.index, ctx)
            .await?;
        Ok(Encoded { concealed, started })
    }

    async fn complete(&self, ctx: &WorkContext, done: Encoded) -> sqlx::Result<()> {
        let inner = &self.worker.inner;
        let (job, tier, index) = (self.job, self.tier, self.index);
        match db::complete_slice(&inner.pool, job, tier, index, &inner.id, done.concealed).await? {
            SliceDone::Counted { merge_queued } => {
                let secs = done.started.elapsed().as_secs_f64();
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
            }
            SliceDone::Duplicate => {}
        }
        Ok(())
    }

    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        db::fail_tier(&self.worker.inner.pool, self.job, self.tier, code, message).await
    }
}
