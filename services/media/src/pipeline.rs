//! The whole media job on one machine: probe, plan slices, split, encode the audio once and the
//! slices in parallel, merge each rung into MP4 + HLS, write the master playlist, the cover and
//! the manifest. `vtx transcode` runs this; workers run its stages one at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::conceal::{Concealed, DamagePolicy};
use crate::encoder::{Tier, VideoCodec};
use crate::transcode::FrameProgress;
use crate::{Deadline, Limits, MediaError, Probe, Quality, measure};

pub use crate::stages::*;

/// Stages reported to a progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Probe,
    Split,
    Encode,
    Merge,
    Quality,
    Done,
}

#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

#[derive(Clone)]
pub struct PipelineRequest {
    pub input: PathBuf,
    pub out_dir: PathBuf,
    pub tier: Tier,
    /// Target slice length; 0 encodes the video as one slice.
    pub slice_seconds: f64,
    /// Slices encoded at once.
    pub jobs: usize,
    /// Threads per encoder and decoder; `None` lets FFmpeg choose.
    pub threads: Option<usize>,
    pub limits: Limits,
    pub watermark: Option<PathBuf>,
    pub hls: bool,
    pub quality: bool,
    /// How much damage is concealed before the source is refused.
    pub damage: DamagePolicy,
    /// Per-title rate factors for the high and extreme tiers (`EncodeOptions`).
    pub quality_target: Option<vtx_domain::QualityTarget>,
    pub psychovisual: bool,
    /// No rendition peaks above this times the source's video bitrate (`LadderLimits`).
    pub max_bitrate_factor: f64,
    pub deadline: Deadline,
    pub progress: Option<ProgressFn>,
}

impl PipelineRequest {
    pub fn new(input: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out_dir: out_dir.into(),
            tier: Tier::Fast,
            slice_seconds: 10.0,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            threads: None,
            limits: Limits::default(),
            watermark: None,
            hls: true,
            quality: true,
            damage: DamagePolicy::default(),
            quality_target: None,
            psychovisual: false,
            max_bitrate_factor: vtx_domain::ladder::DEFAULT_BITRATE_FACTOR,
            deadline: Deadline::none(),
            progress: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestRendition {
    pub name: String,
    pub codec: VideoCodec,
    pub codec_string: String,
    /// Relative to the output directory.
    pub file: String,
    pub width: u32,
    pub height: u32,
    /// Whole-file bitrate, bits per second.
    pub bitrate: u64,
    pub frames: u64,
    pub duration: f64,
    pub bytes: u64,
    pub prefetch_bytes_3s: u64,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub hls_playlist: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub source: Probe,
    pub tier: Tier,
    pub slices: usize,
    pub renditions: Vec<ManifestRendition>,
    pub hls_master: Option<String>,
    pub cover: Option<String>,
    pub audio: bool,
    /// Frames of the source that could not be decoded and were concealed.
    #[serde(default)]
    pub concealed: Concealed,
}

/// Runs the whole pipeline into `out_dir`. On error, everything it wrote there is removed.
pub fn run_pipeline(req: &PipelineRequest) -> Result<Manifest, MediaError> {
    crate::init();
    std::fs::create_dir_all(&req.out_dir)?;
    let work = tempfile::Builder::new()
        .prefix(".vtx-work-")
        .tempdir_in(&req.out_dir)?;
    let mut written = Vec::new();
    let result = run_inner(req, work.path(), &mut written);
    if result.is_err() {
        for p in written {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    result
}

fn report(req: &PipelineRequest, stage: Stage, done: u64, total: u64) {
    if let Some(p) = &req.progress {
        p(Progress { stage, done, total });
    }
}

fn run_inner(
    req: &PipelineRequest,
    work: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<Manifest, MediaError> {
    report(req, Stage::Probe, 0, 1);
    report(req, Stage::Split, 0, 1);
    let fixed = req.slice_seconds;
    let mut prepared = prepare(
        &req.input,
        work,
        &|_| fixed,
        &req.limits,
        req.damage,
        req.deadline,
    )?;
    prepared.plan.ladder.factor = req.max_bitrate_factor;
    let plan = &prepared.plan;
    report(req, Stage::Split, 1, 1);

    // Encode every slice's ladder on `jobs` threads.
    let total_frames = plan.frames;
    let encoded = Arc::new(AtomicU64::new(0));
    let next = AtomicUsize::new(0);
    let windows: Vec<_> = prepared.slices.iter().map(|s| s.window).collect();
    let order = vtx_domain::slicing::longest_first(&windows);
    let failure: Mutex<Option<MediaError>> = Mutex::new(None);
    let concealed_video = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..req.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if failure.lock().expect("lock").is_some() {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(slice) = order.get(n).map(|&i| &prepared.slices[i]) else {
                        return;
                    };
                    let progress: FrameProgress = {
                        let (encoded, req) = (encoded.clone(), req.clone());
                        let last = Arc::new(AtomicU64::new(0));
                        Arc::new(move |n| {
                            let before = last.swap(n, Ordering::Relaxed);
                            let total =
                                encoded.fetch_add(n - before, Ordering::Relaxed) + (n - before);
                            report(&req, Stage::Encode, total, total_frames);
                        })
                    };
                    let options = EncodeOptions {
                        watermark: req.watermark.clone(),
                        threads: req.threads,
                        progress: Some(progress),
                        h264_encoder: None,
                        damage: req.damage,
                        quality_target: req.quality_target,
                        psychovisual: req.psychovisual,
                        vmaf_tool: None,
                    };
                    match encode_slice(
                        &slice.path,
                        plan,
                        slice.window.index,
                        req.tier,
                        work,
                        &options,
                        req.deadline,
                    ) {
                        Ok(done) => {
                            concealed_video
                                .fetch_add(done.concealed_video_frames, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failure.lock().expect("lock").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    let concealed = Concealed {
        video_frames: concealed_video.into_inner(),
        audio_frames: prepared.concealed_audio_frames,
    };
    req.damage
        .check_share("video", concealed.video_frames, plan.frames)
        .map_err(MediaError::CorruptStream)?;

    report(req, Stage::Merge, 0, 1);
    for (_, _, name) in plan_outputs(
        req.tier,
        plan.display_width,
        plan.display_height,
        &plan.ladder,
    ) {
        written.push(req.out_dir.join(format!("{name}.mp4")));
    }
    written.extend([req.out_dir.join("hls"), req.out_dir.join("cover.jpg")]);
    let mut packaged = package(
        plan,
        req.tier,
        work,
        prepared.audio.as_deref(),
        &req.out_dir,
        req.hls,
        req.deadline,
    )?;
    verify_packaged(plan, &packaged)?;
    report(req, Stage::Merge, 1, 1);

    if req.quality {
        report(req, Stage::Quality, 0, 1);
        let files: Vec<PathBuf> = packaged
            .renditions
            .iter()
            .map(|r| req.out_dir.join(&r.file))
            .collect();
        let q: Vec<Quality> = measure(&req.input, plan.rotation, &files, req.deadline)?;
        for (r, q) in packaged.renditions.iter_mut().zip(q) {
            r.psnr = Some((q.psnr * 100.0).round() / 100.0);
            r.ssim = Some((q.ssim * 10_000.0).round() / 10_000.0);
        }
        report(req, Stage::Quality, 1, 1);
    }

    let manifest = Manifest {
        slices: prepared.slices.len(),
        source: prepared.probe,
        tier: req.tier,
        renditions: packaged.renditions,
        hls_master: packaged.hls_master,
        cover: packaged.cover,
        audio: prepared.audio.is_some(),
        concealed,
    };
    let path = req.out_dir.join("manifest.json");
    written.push(path.clone());
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).map_err(|e| MediaError::Io(e.into()))?,
    )?;
    report(req, Stage::Done, 1, 1);
    Ok(manifest)
}
