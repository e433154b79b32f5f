//! Extreme encodes (HEVC and AV1 for hot videos): once a video's extreme tier is merged, each
//! rendition is measured against the source next to the high tier's rendition of the same rung
//! and added beside the H.264 renditions only when it is smaller at equal quality. The
//! measured savings are stored with the video's extreme request.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use vtx_domain::hotness::Measured;
use vtx_domain::{ErrorCode, JobId, Tier, VideoId, keys};
use vtx_infra::db::{self, ExtremeReason, WorkContext};
use vtx_media::Deadline;

use crate::merges::tier_output;
use crate::{WorkError, Worker, run_in};
use vtx_infra::driver::{Failure, LeasedTask};

/// One extreme rendition's verdict, as stored and shown.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub codec: String,
    pub bitrate: u64,
    pub high_bitrate: u64,
    /// Fraction of the high tier's bitrate saved.
    pub saving: f64,
    pub psnr: f64,
    pub ssim: f64,
    pub high_psnr: f64,
    pub high_ssim: f64,
    pub accepted: bool,
    /// Why it was not added.
    pub reason: Option<String>,
}

impl Worker {
    /// After a video's high tier went live: a large following predicts a hot video.
    pub(crate) async fn predict_hot(&self, video: VideoId) {
        let pool = &self.inner.pool;
        let threshold = self.inner.hotness.followers_threshold;
        match db::followed_without_extreme(pool, threshold, Some(video)).await {
            Ok(found) => {
                for (v, followers) in found {
                    match db::request_extreme(pool, v, ExtremeReason::Followers, followers).await {
                        Ok(true) => {
                            tracing::info!(%v, followers, "predicted hot: extreme encode requested")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot request the extreme encode (the tracker's sweep will)")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the prediction (the tracker's sweep will)")
            }
        }
    }

    /// Packages the extreme tier, measures it and the live high tier against the source, and
    /// records the verdicts; the accepted renditions are uploaded and added. Returns whether
    /// any was added.
    async fn judge_extreme(&self, job: JobId, ctx: &WorkContext) -> Result<bool, WorkError> {
        let inner = &self.inner;
        let (scratch, out, packaged) = self.package_tier(job, Tier::Extreme, ctx).await?;
        let video = db::get_video(&inner.pool, ctx.video_id)
            .await?
            .ok_or_else(|| WorkError::Internal("the video is gone".into()))?;
        let high: Vec<db::RenditionRow> = db::live_renditions(&inner.pool, ctx.video_id)
            .await?
            .into_iter()
            .filter(|r| r.container == "mp4" && r.codec == "h264")
            .collect();
        if video.live_tier.as_deref() != Some("high") || high.is_empty() {
            return Err(WorkError::Internal(
                "the video's high tier is not live: nothing to compare with".into(),
            ));
        }
        let source = scratch.path().join("source");
        inner.store.download_to(&video.source_key, &source).await?;
        let mut files = Vec::new();
        for r in &high {
            let p = scratch.path().join(format!("high-{}.mp4", r.name));
            inner.store.download_to(&r.object_key, &p).await?;
            files.push(p);
        }
        files.extend(packaged.renditions.iter().map(|r| out.join(&r.file)));
        let (rotation, timeout) = (ctx.plan.rotation, inner.cfg.transcode_timeout);
        let measured = run_in(vtx_media::CpuClass::Background, timeout, move || {
            vtx_media::measure(&source, rotation, &files, Deadline::after(timeout))
        })
        .await?;
        let (high_q, extreme_q) = measured.split_at(high.len());
        let rule = inner.hotness.accept;
        let mut verdicts = Vec::new();
        let mut accepted_names = Vec::new();
        for (r, q) in packaged.renditions.iter().zip(extreme_q) {
            let rung = r.name.split('-').next().unwrap_or(&r.name);
            let Some((h, hq)) = high.iter().zip(high_q).find(|(h, _)| h.name == rung) else {
                continue;
            };
            let high_m = Measured {
                bitrate: h.bitrate.max(0) as u64,
                psnr: hq.psnr,
                ssim: hq.ssim,
            };
            let m = Measured {
                bitrate: r.bitrate,
                psnr: q.psnr,
                ssim: q.ssim,
            };
            let verdict = rule.judge(high_m, m);
            if verdict.is_ok() {
                accepted_names.push(r.name.clone());
            }
            verdicts.push(Verdict {
                name: r.name.clone(),
                codec: r.codec.label().to_string(),
                bitrate: m.bitrate,
                high_bitrate: high_m.bitrate,
                saving: 1.0 - m.bitrate as f64 / high_m.bitrate.max(1) as f64,
                psnr: m.psnr,
                ssim: m.ssim,
                high_psnr: high_m.psnr,
                high_ssim: high_m.ssim,
                accepted: verdict.is_ok(),
                reason: verdict.err(),
            });
        }
        // Only what is added is uploaded: its MP4 and its HLS media playlist and segments.
        let dest = keys::tier_output(ctx.video_id, job, Tier::Extreme);
        let mut output = tier_output(&dest, &packaged);
        output
            .renditions
            .retain(|r| accepted_names.contains(&r.name));
        for r in &mut output.renditions {
            if let Some(v) = verdicts.iter().find(|v| v.name == r.name) {
                r.psnr = Some(v.psnr);
                r.ssim = Some(v.ssim);
            }
            let file = r.object_key.trim_start_matches(&dest).to_string();
            inner
                .store
                .put_file(&r.object_key, &out.join(&file), "video/mp4")
                .await?;
            if r.hls_playlist_key.is_some() {
                let hls = format!("hls/{}/", r.name);
                inner
                    .store
                    .put_tree(&out.join(&hls), &format!("{dest}{hls}"))
                    .await?;
            }
        }
        let masters = match (&video.hls_master_key, &packaged.hls_master) {
            (Some(high_master), Some(own)) => {
                self.combined_masters(&output.renditions, high_master, &out.join(own), &dest)
                    .await?
            }
            _ => BTreeMap::new(),
        };
        let added = !output.renditions.is_empty();
        for v in &verdicts {
            tracing::info!(
                rendition = v.name,
                saving = v.saving,
                psnr = v.psnr,
                high_psnr = v.high_psnr,
                accepted = v.accepted,
                reason = v.reason.as_deref().unwrap_or(""),
                "extreme verdict"
            );
        }
        let result = serde_json::to_value(&verdicts)
            .map_err(|e| WorkError::Internal(format!("verdicts: {e}")))?;
        db::finish_extreme(
            &inner.pool,
            job,
            ctx.video_id,
            &output.renditions,
            &result,
            &masters,
        )
        .await?;
        Ok(added)
    }

    /// Writes one master playlist per set of added codecs (`hevc`, `av1`, `av1+hevc`), each
    /// listing the live high tier's H.264 variants and the added ones of those codecs, so a
    /// player gets them all in one URL and picks by `CODECS`. Returns codec set -> object key.
    async fn combined_masters(
        &self,
        added: &[db::NewRendition],
        high_master: &str,
        own_master: &Path,
        dest: &str,
    ) -> Result<BTreeMap<String, String>, WorkError> {
        let store = &self.inner.store;
        let dir = own_master.parent().unwrap_or(Path::new("."));
        let base_path = dir.join("high-master.m3u8");
        store.download_to(high_master, &base_path).await?;
        let base = std::fs::read_to_string(&base_path)?;
        let base_dir = &high_master[..high_master.rfind('/').map_or(0, |i| i + 1)];
        let own = vtx_domain::hls::variants(&std::fs::read_to_string(own_master)?);
        let hls_dir = format!("{dest}hls/");
        let mut codecs: Vec<&str> = added.iter().map(|r| r.codec.as_str()).collect();
        codecs.sort_unstable();
        codecs.dedup();
        let mut masters = BTreeMap::new();
        for set in 1..(1u32 << codecs.len()) {
            let chosen: Vec<&str> = (0..codecs.len())
                .filter(|i| set & (1 << i) != 0)
                .map(|i| codecs[i])
                .collect();
            let extra: Vec<_> = own
                .iter()
                .filter(|e| {
                    added.iter().any(|r| {
                        chosen.contains(&r.codec.as_str())
                            && r.hls_playlist_key.as_deref() == Some(&format!("{hls_dir}{}", e.uri))
                    })
                })
                .cloned()
                .collect();
            if extra.is_empty() {
                continue;
            }
            let name = vtx_domain::hls::codec_set(chosen.iter().copied());
            let text = vtx_domain::hls::combined_master(&base, base_dir, &extra, &hls_dir);
            let file = dir.join(format!("master-{name}.m3u8"));
            std::fs::write(&file, text)?;
            let key = format!("{hls_dir}master-{name}.m3u8");
            store
                .put_file(&key, &file, "application/vnd.apple.mpegurl")
                .await?;
            masters.insert(name, key);
        }
        Ok(masters)
    }
}

/// Merging a video's extreme tier and judging it, run by the driver.
pub(crate) struct ExtremeMergeTask<'a> {
    pub worker: &'a Worker,
    pub job: JobId,
}

impl LeasedTask for ExtremeMergeTask<'_> {
    type Claim = WorkContext;
    /// Whether any rendition was added (the verdicts are recorded by the run).
    type Done = bool;

    fn what(&self) -> String {
        "extreme merge".to_string()
    }

    async fn claim(&self) -> sqlx::Result<Option<WorkContext>> {
        db::claim_merge(&self.worker.inner.pool, self.job, Tier::Extreme).await
    }

    fn attempt(claim: &WorkContext) -> u32 {
        claim.attempts
    }

    async fn run(&self, ctx: &WorkContext) -> Result<bool, Failure> {
        self.worker
            .judge_extreme(self.job, ctx)
            .await
            .map_err(crate::packaging_failure)
    }

    async fn complete(&self, _: &WorkContext, added: bool) -> sqlx::Result<()> {
        metrics::counter!("vtx_extreme_results_total", "added" => added.to_string()).increment(1);
        Ok(())
    }

    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        db::fail_tier(
            &self.worker.inner.pool,
            self.job,
            Tier::Extreme,
            code,
            message,
        )
        .await
    }
}
