//! Transcoding while the upload arrives: a worker encodes each stored chunk into the fast
//! ladder and packages its HLS segments straight into the fast tier's objects; once the upload
//! is complete and every chunk is encoded, publishing writes only the playlists and the cover.

use std::time::Duration;

use vtx_domain::live_ingest::{ChunkEncode, package_chunks, playlist_files};
use vtx_domain::{ErrorCode, JobId, Tier, UploadId, VideoId, keys};
use vtx_infra::broker::Outcome;
use vtx_infra::db::{self, ChunkWork, LiveIngestMerge, NewRendition, TierOutput, VideoFacts};
use vtx_media::{Deadline, EncodeOptions, Limits, chunk_hls_dir};

use crate::{WorkError, Worker, run_blocking};
use vtx_infra::driver::{Failure, LeasedTask};

/// Where chunk 0's top rung waits for the cover to be taken from it.
fn cover_source(job: JobId) -> String {
    format!("{}chunk-cover.mp4", keys::work(job))
}

impl Worker {
    pub(crate) async fn handle_chunk(&self, upload: UploadId, index: u32) -> Outcome {
        let task = ChunkEncodeTask {
            worker: self,
            upload,
            index,
        };
        vtx_infra::driver::drive(&task, self.policy()).await
    }

    async fn encode_chunk(&self, index: u32, work: &ChunkWork) -> Result<ChunkEncode, WorkError> {
        let inner = &self.inner;
        let scratch = tempfile::Builder::new()
            .prefix("vtx-chunk-")
            .tempdir_in(&inner.scratch)?;
        let input = scratch.path().join("chunk.ts");
        inner.store.download_to(&work.object_key, &input).await?;
        let out = scratch.path().join("out");
        let timeout = inner.cfg.transcode_timeout;
        let limits = Limits {
            max_duration: Duration::from_secs(inner.cfg.max_source_seconds),
            ..Limits::default()
        };
        let options = EncodeOptions {
            h264_encoder: self.preferred_h264(),
            ..EncodeOptions::default()
        };
        let (out2, rotation) = (out.clone(), work.rotation);
        let span = tracing::Span::current();
        let encoded = run_blocking(timeout, move || {
            let _e = span.enter();
            vtx_media::encode_chunk(
                &input,
                rotation,
                Tier::Fast,
                &out2,
                &limits,
                &options,
                Deadline::after(timeout),
            )
        })
        .await?;
        for r in &encoded.renditions {
            let dest = keys::chunk_hls(work.video, work.job, Tier::Fast, &r.name, index);
            inner
                .store
                .put_tree(&chunk_hls_dir(&out, &r.name), &dest)
                .await?;
        }
        if index == 0
            && let Some(top) = encoded.renditions.last()
        {
            inner
                .store
                .put_file(
                    &cover_source(work.job),
                    &out.join(format!("{}.mp4", top.name)),
                    "video/mp4",
                )
                .await?;
        }
        Ok(encoded)
    }

    async fn package_chunks(
        &self,
        job: JobId,
        m: &db::LiveIngestMerge,
    ) -> Result<(TierOutput, VideoFacts), WorkError> {
        let inner = &self.inner;
        let packaged = package_chunks(&m.chunks)
            .map_err(|e| WorkError::Media(vtx_media::MediaError::CorruptStream(e.to_string())))?;
        let scratch = tempfile::Builder::new()
            .prefix("vtx-publish-")
            .tempdir_in(&inner.scratch)?;
        let out = scratch.path().join("out");
        std::fs::create_dir_all(out.join("hls"))?;
        let dest = keys::tier_output(m.video, job, Tier::Fast);
        let mut renditions = Vec::new();
        for r in &packaged.renditions {
            let dir = out.join("hls").join(&r.name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("index.m3u8"), &r.playlist)?;
            renditions.push(NewRendition::hls(&dest, r));
        }
        std::fs::write(out.join("hls/master.m3u8"), &packaged.master)?;
        // The cover, from the first chunk's top rung (a small file, whatever the length).
        let cover_src = scratch.path().join("cover-source.mp4");
        let cover = match inner
            .store
            .download_to(&cover_source(job), &cover_src)
            .await
        {
            Ok(_) => {
                let (src, to) = (cover_src.clone(), out.join("cover.jpg"));
                match run_blocking(inner.cfg.transcode_timeout, move || {
                    vtx_media::write_cover(&src, &to, Deadline::after(Duration::from_secs(30)))
                })
                .await
                {
                    Ok(()) => Some(format!("{dest}cover.jpg")),
                    Err(e) => {
                        tracing::warn!(error = %e, "no cover");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no cover source");
                None
            }
        };
        inner.store.put_tree(&out, &dest).await?;
        Ok((
            TierOutput {
                renditions,
                hls_master_key: Some(format!("{dest}hls/master.m3u8")),
                cover_key: cover,
            },
            VideoFacts {
                width: packaged.width,
                height: packaged.height,
                frames: packaged.frames,
                duration_ms: (packaged.seconds * 1000.0).round() as u64,
            },
        ))
    }

    async fn mux_one(
        &self,
        video: vtx_domain::VideoId,
        job: JobId,
        r: &db::HlsOnly,
    ) -> Result<NewRendition, WorkError> {
        let (name, playlist_key) = (r.name.as_str(), r.playlist_key.as_str());
        use futures_util::{StreamExt, TryStreamExt};
        let inner = &self.inner;
        let scratch = tempfile::Builder::new()
            .prefix("vtx-mux-")
            .tempdir_in(&inner.scratch)?;
        let playlist = scratch.path().join("index.m3u8");
        inner.store.download_to(playlist_key, &playlist).await?;
        let base = &playlist_key[..playlist_key.rfind('/').map_or(0, |i| i + 1)];
        let files = playlist_files(&std::fs::read_to_string(&playlist)?);
        futures_util::stream::iter(files)
            .map(|f| {
                let (key, path) = (format!("{base}{f}"), scratch.path().join(&f));
                async move {
                    if let Some(dir) = path.parent() {
                        tokio::fs::create_dir_all(dir).await?;
                    }
                    inner.store.download_to(&key, &path).await?;
                    Ok::<(), WorkError>(())
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        let codec = match r.codec.as_str() {
            "hevc" => vtx_media::VideoCodec::Hevc,
            "av1" => vtx_media::VideoCodec::Av1,
            _ => vtx_media::VideoCodec::H264,
        };
        let mp4 = scratch.path().join(format!("{name}.mp4"));
        let (pl, out, timeout) = (playlist.clone(), mp4.clone(), inner.cfg.transcode_timeout);
        let report = run_blocking(timeout, move || {
            vtx_media::remux_hls_to_mp4(&pl, codec, &out, Deadline::after(timeout))
        })
        .await?;
        let key = format!("{}{name}.mp4", keys::tier_output(video, job, r.tier));
        inner.store.put_file(&key, &mp4, "video/mp4").await?;
        Ok(NewRendition {
            name: name.to_string(),
            container: "mp4",
            codec: codec.label().to_string(),
            codec_string: report.codec_string,
            object_key: key,
            hls_playlist_key: Some(playlist_key.to_string()),
            width: r.width,
            height: r.height,
            frames: report.frames,
            duration_ms: (report.duration_seconds * 1000.0).round() as u64,
            size_bytes: report.mp4_bytes,
            bitrate: if report.duration_seconds > 0.0 {
                (report.mp4_bytes as f64 * 8.0 / report.duration_seconds) as u64
            } else {
                0
            },
            prefetch_bytes_3s: report.prefetch_bytes_3s,
            psnr: None,
            ssim: None,
        })
    }
}

/// One stored chunk's fast-ladder encode, under a lease, run by the driver.
struct ChunkEncodeTask<'a> {
    worker: &'a Worker,
    upload: UploadId,
    index: u32,
}

impl LeasedTask for ChunkEncodeTask<'_> {
    type Claim = ChunkWork;
    type Done = (ChunkEncode, std::time::Instant);

    fn what(&self) -> String {
        format!("chunk {}", self.index)
    }

    async fn claim(&self) -> sqlx::Result<Option<ChunkWork>> {
        let inner = &self.worker.inner;
        db::claim_chunk_encode(
            &inner.pool,
            self.upload,
            self.index,
            &inner.id,
            inner.cfg.lease,
        )
        .await
    }

    fn attempt(claim: &ChunkWork) -> u32 {
        claim.attempts
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.worker.inner.cfg.lease)
    }

    async fn renew(&self) -> sqlx::Result<bool> {
        let inner = &self.worker.inner;
        db::heartbeat_chunk_encode(
            &inner.pool,
            self.upload,
            self.index,
            &inner.id,
            inner.cfg.lease,
        )
        .await
    }

    async fn run(&self, work: &ChunkWork) -> Result<Self::Done, Failure> {
        let started = std::time::Instant::now();
        let encoded = self.worker.encode_chunk(self.index, work).await?;
        Ok((encoded, started))
    }

    async fn complete(&self, _: &ChunkWork, (encoded, started): Self::Done) -> sqlx::Result<()> {
        let inner = &self.worker.inner;
        db::finish_chunk_encode(&inner.pool, self.upload, self.index, &inner.id, &encoded).await?;
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("vtx_encode_fps", "tier" => "fast")
            .record(encoded.frames as f64 / secs.max(1e-3));
        tracing::info!(secs, frames = encoded.frames, "chunk encoded");
        Ok(())
    }

    /// Before completion the upload will complete the ordinary way; after, its fast tier fails.
    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        let pool = &self.worker.inner.pool;
        if let Some(job) =
            db::fail_chunk_encode(pool, self.upload, self.index, code, message).await?
        {
            db::fail_tier(pool, job, Tier::Fast, code, message).await?;
        }
        Ok(())
    }
}

/// Publishing a live-ingest job's fast tier: playlists over the chunks' segments, the master
/// playlist and the cover, then the playback pointer. Run by the driver, as a merge.
pub(crate) struct PublishChunksTask<'a> {
    pub worker: &'a Worker,
    pub job: JobId,
}

impl LeasedTask for PublishChunksTask<'_> {
    type Claim = LiveIngestMerge;
    type Done = (TierOutput, VideoFacts, std::time::Instant);

    fn what(&self) -> String {
        "publishing".to_string()
    }

    async fn claim(&self) -> sqlx::Result<Option<LiveIngestMerge>> {
        db::claim_live_ingest_merge(&self.worker.inner.pool, self.job).await
    }

    fn attempt(claim: &LiveIngestMerge) -> u32 {
        claim.attempts
    }

    async fn run(&self, m: &LiveIngestMerge) -> Result<Self::Done, Failure> {
        let started = std::time::Instant::now();
        // Each chunk concealed what it could not decode; too much over the whole upload means
        // the source is corrupt.
        let frames: u64 = m.chunks.iter().map(|(_, e)| e.frames).sum();
        let concealed: u64 = m.chunks.iter().map(|(_, e)| e.concealed_video_frames).sum();
        let damage = &self.worker.inner.cfg.damage;
        if let Err(why) = damage.check_share("video", concealed, frames) {
            return Err(Failure::Fatal {
                code: ErrorCode::CorruptStream,
                message: why,
            });
        }
        let (output, facts) = self
            .worker
            .package_chunks(self.job, m)
            .await
            .map_err(crate::packaging_failure)?;
        Ok((output, facts, started))
    }

    async fn complete(
        &self,
        m: &LiveIngestMerge,
        (output, facts, started): Self::Done,
    ) -> sqlx::Result<()> {
        let inner = &self.worker.inner;
        let later = inner.pipeline.tiers.iter().any(|t| *t != Tier::Fast);
        let live = db::publish_live_ingest(
            &inner.pool,
            self.job,
            m.video,
            &output,
            &facts,
            later,
            inner.pipeline.swap_grace,
        )
        .await?;
        if live {
            crate::went_live(&inner.pool, self.job, Tier::Fast).await;
            tracing::info!(
                secs = started.elapsed().as_secs_f64(),
                chunks = m.chunks.len(),
                "fast tier live from the upload's chunks"
            );
        }
        Ok(())
    }

    async fn give_up(&self, code: ErrorCode, message: &str) -> sqlx::Result<()> {
        db::fail_tier(&self.worker.inner.pool, self.job, Tier::Fast, code, message).await
    }
}

/// Muxing a live-ingest fast tier's (or a live instant tier's) MP4 renditions from its HLS segments (stream copy) and
/// adding them to the playback. Background work: HLS plays meanwhile, a rendition that cannot
/// be muxed is left HLS only, and the tier stays as it is whatever happens here. It keeps no
/// attempt count: a storage or database failure is retried until it passes.
pub(crate) struct MuxChunksTask<'a> {
    pub worker: &'a Worker,
    pub job: JobId,
}

impl LeasedTask for MuxChunksTask<'_> {
    type Claim = (VideoId, Vec<db::HlsOnly>);
    type Done = (Vec<(Tier, NewRendition)>, std::time::Instant);

    fn what(&self) -> String {
        "mux".to_string()
    }

    async fn claim(&self) -> sqlx::Result<Option<Self::Claim>> {
        db::renditions_without_mp4(&self.worker.inner.pool, self.job).await
    }

    fn attempt(_: &Self::Claim) -> u32 {
        1
    }

    async fn run(&self, (video, todo): &Self::Claim) -> Result<Self::Done, Failure> {
        let started = std::time::Instant::now();
        let mut muxed = Vec::new();
        for r in todo {
            match self.worker.mux_one(*video, self.job, r).await {
                Ok(made) => muxed.push((r.tier, made)),
                Err(WorkError::Media(e)) => {
                    tracing::warn!(rendition = r.name, error = %e, "no MP4 for this rendition");
                }
                Err(e) => return Err(Failure::Retryable(e.to_string())),
            }
        }
        Ok((muxed, started))
    }

    async fn complete(
        &self,
        (video, _): &Self::Claim,
        (muxed, started): Self::Done,
    ) -> sqlx::Result<()> {
        for tier in [Tier::Instant, Tier::Fast] {
            let of_tier: Vec<NewRendition> = muxed
                .iter()
                .filter(|(t, _)| *t == tier)
                .map(|(_, r)| r.clone())
                .collect();
            if !of_tier.is_empty() {
                db::add_renditions(&self.worker.inner.pool, *video, self.job, tier, &of_tier)
                    .await?;
            }
        }
        tracing::info!(secs = started.elapsed().as_secs_f64(), "tier MP4s muxed");
        Ok(())
    }

    /// Never reached (a mux neither fails fatally nor runs out of attempts): nothing to record.
    async fn give_up(&self, _: ErrorCode, message: &str) -> sqlx::Result<()> {
        tracing::warn!(message, "the MP4s stay missing; the tier plays as HLS");
        Ok(())
    }
}
