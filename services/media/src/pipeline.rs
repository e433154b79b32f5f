//! The whole media job on one machine: probe, plan slices, split, encode the audio once and the
//! slices in parallel, merge each rung into MP4 + HLS, write the master playlist, the cover and
//! the manifest. `vtx transcode` runs this; workers run its stages one at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vtx_domain::{Grid, JobPlan, Rung, plan_ladder, plan_slices_on_grid};

use crate::conceal::{Concealed, DamagePolicy};
use crate::encoder::{Tier, VideoCodec, tier_codecs};
use crate::hls::{Variant, master_playlist, playlist_bitrates};
use crate::merge::{EncodedSlice, MergeRequest, merge_rendition};
use crate::split::{SliceFile, split_video};
use crate::transcode::{
    FrameProgress, RenditionOutput, TranscodeRequest, Window, transcode_ladder,
};
use crate::{
    Deadline, Limits, MediaError, Probe, Quality, encode_audio, measure, probe, write_cover,
};

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

/// The renditions of a tier: every codec of the tier times every rung of the ladder.
pub fn plan_outputs(
    tier: Tier,
    display_width: u32,
    display_height: u32,
) -> Vec<(Rung, VideoCodec, String)> {
    let ladder = plan_ladder(display_width, display_height);
    tier_codecs(tier)
        .iter()
        .flat_map(|&codec| {
            ladder.iter().map(move |rung| {
                let name = match codec {
                    VideoCodec::H264 => rung.name.clone(),
                    other => format!("{}-{}", rung.name, other.label()),
                };
                (rung.clone(), codec, name)
            })
        })
        .collect()
}

/// Slices planned on the GOP index. Decoding starts at the last keyframe at or before the first
/// shown frame (an edit list may hide a few frames after it); later cuts are keyframes inside
/// the shown span. `slice_seconds` 0 makes one slice.
pub fn plan_job(probe: &Probe, slice_seconds: f64) -> JobPlan {
    let v = &probe.video;
    let tb = v.time_base;
    let mut keys: Vec<i64> = v.keyframes.iter().map(|k| k.pts).collect();
    keys.sort_unstable();
    keys.dedup();
    let lead = keys.iter().rev().find(|&&k| k <= v.start_pts).copied();
    keys.retain(|&k| k > v.start_pts || Some(k) == lead);
    let ticks_per_second = f64::from(tb.1) / f64::from(tb.0);
    let target = if slice_seconds > 0.0 {
        (slice_seconds * ticks_per_second).round() as i64
    } else {
        i64::MAX / 4
    };
    JobPlan {
        time_base: tb,
        frame_rate: v.frame_rate_q,
        rotation: v.rotation,
        display_width: v.display_width,
        display_height: v.display_height,
        shown_start: v.start_pts,
        end: v.end_pts,
        frames: v.frames,
        duration_seconds: v.duration_seconds,
        has_audio: probe.audio.is_some(),
        audio_lead: probe
            .audio
            .as_ref()
            .and_then(|a| a.start_seconds)
            .map_or(0, |audio_start| {
                let video_start = v.start_pts as f64 * f64::from(tb.0) / f64::from(tb.1);
                ((video_start - audio_start).max(0.0) * ticks_per_second).round() as i64
            }),
        // Cuts prefer source keyframes on the 2 s output grid (see `encode_slice`).
        slices: plan_slices_on_grid(
            &keys,
            v.end_pts,
            target,
            Some(Grid {
                origin: v.start_pts,
                period: (GOP_SECONDS * ticks_per_second).round() as i64,
                tolerance: (ticks_per_second * f64::from(v.frame_rate_q.1)
                    / f64::from(v.frame_rate_q.0).max(1.0)
                    / 2.0) as i64,
            }),
        ),
    }
}

/// Keyframe interval of every encode: rungs and slices share one grid.
const GOP_SECONDS: f64 = 2.0;

/// What `prepare` leaves in its work directory.
pub struct Prepared {
    pub probe: Probe,
    pub plan: JobPlan,
    pub slices: Vec<SliceFile>,
    /// AAC for the whole video, if it has audio.
    pub audio: Option<PathBuf>,
    /// Audio frames of the source that could not be decoded and were concealed with silence.
    pub concealed_audio_frames: u64,
}

/// Stage 1: probe and validate, plan (with the slice length `slice_seconds` picks for the
/// probed source), cut the video into slice files and encode the audio once (beside the split),
/// all under `work`.
pub fn prepare(
    input: &Path,
    work: &Path,
    slice_seconds: &dyn Fn(&Probe) -> f64,
    limits: &Limits,
    damage: DamagePolicy,
    deadline: Deadline,
) -> Result<Prepared, MediaError> {
    crate::init();
    let probe = probe(input, limits, deadline)?;
    let mut plan = plan_job(&probe, slice_seconds(&probe));
    let audio_path = work.join("audio.m4a");
    let (slices, audio) = std::thread::scope(|scope| {
        let audio = plan.has_audio.then(|| {
            scope.spawn(|| {
                encode_audio(
                    input,
                    &audio_path,
                    plan.shown_start,
                    plan.time_base,
                    damage,
                    deadline,
                )
            })
        });
        let slices = split_video(input, &probe, &plan.slices, work, deadline);
        let has_audio = match audio {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(MediaError::Io(std::io::Error::other(
                    "audio encoder panicked",
                )))
            }),
            None => Ok(None),
        };
        (slices, has_audio)
    });
    let (slices, audio) = (slices?, audio?);
    plan.has_audio = audio.is_some();
    Ok(Prepared {
        probe,
        plan,
        slices,
        audio: audio.is_some().then_some(audio_path),
        concealed_audio_frames: audio.unwrap_or(0),
    })
}

/// Where `encode_slice` writes rendition `name` of slice `index`.
pub fn encoded_slice_path(dir: &Path, index: u32, name: &str) -> PathBuf {
    dir.join(format!("enc-{index:05}-{name}.mp4"))
}

/// Options of a slice encode beyond the plan.
#[derive(Clone, Default)]
pub struct EncodeOptions {
    pub watermark: Option<PathBuf>,
    pub threads: Option<usize>,
    pub progress: Option<FrameProgress>,
    /// Force this H.264 encoder (e.g. a GPU one) instead of libx264.
    pub h264_encoder: Option<String>,
    /// How much damage is concealed before the source is refused.
    pub damage: DamagePolicy,
}

/// What a slice encode wrote.
#[derive(Clone, Debug)]
pub struct SliceEncode {
    /// One file per rendition, `encoded_slice_path(out_dir, index, name)`.
    pub paths: Vec<PathBuf>,
    /// Frames of the slice's window that could not be decoded and were concealed.
    pub concealed_video_frames: u64,
}

/// Stage 2: encodes slice `index` (its file as `split_video` wrote it) into every rendition of
/// `tier`, as `encoded_slice_path(out_dir, index, name)` files.
pub fn encode_slice(
    slice_file: &Path,
    plan: &JobPlan,
    index: u32,
    tier: Tier,
    out_dir: &Path,
    options: &EncodeOptions,
    deadline: Deadline,
) -> Result<SliceEncode, MediaError> {
    let w = plan
        .slices
        .get(index as usize)
        .ok_or_else(|| MediaError::CorruptStream(format!("no slice {index} in the plan")))?;
    let (start, end) = plan.window_in_slice(w);
    let outputs: Vec<RenditionOutput> = plan_outputs(tier, plan.display_width, plan.display_height)
        .into_iter()
        .map(|(rung, codec, name)| RenditionOutput {
            path: encoded_slice_path(out_dir, index, &name),
            rung,
            codec,
        })
        .collect();
    let paths = outputs.iter().map(|o| o.path.clone()).collect();
    let request = TranscodeRequest {
        input: slice_file.to_path_buf(),
        window: Some(Window {
            start,
            end,
            time_base: plan.time_base,
        }),
        timeline_offset: plan.offset_of(w),
        outputs,
        tier,
        gop_seconds: GOP_SECONDS,
        frame_rate: Some(plan.frame_rate),
        rotation: plan.rotation,
        watermark: options.watermark.clone(),
        audio: false,
        threads: options.threads,
        h264_encoder: options.h264_encoder.clone(),
        crf: None,
        damage: options.damage,
        deadline,
        progress: options.progress.clone(),
    };
    let reports = transcode_ladder(&request)?;
    Ok(SliceEncode {
        paths,
        concealed_video_frames: reports.first().map_or(0, |r| r.concealed.video_frames),
    })
}

/// The result of packaging a tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Packaged {
    pub renditions: Vec<ManifestRendition>,
    /// Relative to the output directory.
    pub hls_master: Option<String>,
    pub cover: Option<String>,
}

/// Stage 3: merges each rendition's encoded slices (from `encoded_dir`) with the audio into
/// `out_dir`: MP4s, HLS with a master playlist, and the cover.
pub fn package(
    plan: &JobPlan,
    tier: Tier,
    encoded_dir: &Path,
    audio: Option<&Path>,
    out_dir: &Path,
    hls: bool,
    deadline: Deadline,
) -> Result<Packaged, MediaError> {
    crate::init();
    std::fs::create_dir_all(out_dir)?;
    let outputs = plan_outputs(tier, plan.display_width, plan.display_height);
    let hls_root = out_dir.join("hls");
    let fps = f64::from(plan.frame_rate.0) / f64::from(plan.frame_rate.1);
    let mut renditions = Vec::new();
    let mut variants = Vec::new();
    for (rung, codec, name) in &outputs {
        let mp4 = out_dir.join(format!("{name}.mp4"));
        let hls_dir = hls.then(|| hls_root.join(name));
        let merged = merge_rendition(&MergeRequest {
            slices: plan
                .slices
                .iter()
                .map(|w| EncodedSlice {
                    path: encoded_slice_path(encoded_dir, w.index, name),
                    // Video starts as late after the audio as in the source.
                    offset: plan.offset_of(w) + plan.audio_lead,
                    offset_tb: plan.time_base,
                })
                .collect(),
            audio: audio.map(Path::to_path_buf),
            audio_offset: plan.audio_lead,
            codec: *codec,
            frame_rate: plan.frame_rate,
            mp4: mp4.clone(),
            hls_dir: hls_dir.clone(),
            segment_seconds: 2.0,
            keep_timestamps: false,
            deadline,
        })?;
        let playlist = hls_dir.as_ref().map(|d| d.join("index.m3u8"));
        if let Some(pl) = &playlist {
            let (peak, average) = playlist_bitrates(pl)?;
            variants.push(Variant {
                uri: format!("{name}/index.m3u8"),
                width: rung.width,
                height: rung.height,
                frame_rate: fps,
                codecs: if audio.is_some() {
                    format!("{},mp4a.40.2", merged.codec_string)
                } else {
                    merged.codec_string.clone()
                },
                peak_bitrate: peak,
                average_bitrate: average,
            });
        }
        renditions.push(ManifestRendition {
            name: name.clone(),
            codec: *codec,
            codec_string: merged.codec_string,
            file: format!("{name}.mp4"),
            width: rung.width,
            height: rung.height,
            bitrate: if merged.duration_seconds > 0.0 {
                (merged.mp4_bytes as f64 * 8.0 / merged.duration_seconds) as u64
            } else {
                0
            },
            frames: merged.frames,
            duration: merged.duration_seconds,
            bytes: merged.mp4_bytes,
            prefetch_bytes_3s: merged.prefetch_bytes_3s,
            psnr: None,
            ssim: None,
            hls_playlist: playlist.map(|_| format!("hls/{name}/index.m3u8")),
        });
    }
    let hls_master = if hls && !variants.is_empty() {
        std::fs::write(hls_root.join("master.m3u8"), master_playlist(&variants))?;
        Some("hls/master.m3u8".to_string())
    } else {
        None
    };
    let cover = match renditions
        .iter()
        .rev()
        .find(|r| r.codec == VideoCodec::H264)
        .or(renditions.last())
    {
        Some(top) => {
            write_cover(
                &out_dir.join(&top.file),
                &out_dir.join("cover.jpg"),
                deadline,
            )?;
            Some("cover.jpg".to_string())
        }
        None => None,
    };
    Ok(Packaged {
        renditions,
        hls_master,
        cover,
    })
}

/// Checks packaged outputs against the plan before they go live: every rendition has the
/// source's frame count (lost frames are concealed, never dropped) and its duration within one
/// frame, whatever the frame rate (frames keep their source times).
pub fn verify_packaged(plan: &JobPlan, packaged: &Packaged) -> Result<(), MediaError> {
    let frame = f64::from(plan.frame_rate.1) / f64::from(plan.frame_rate.0);
    for r in &packaged.renditions {
        let ok =
            r.frames == plan.frames && (r.duration - plan.duration_seconds).abs() <= frame + 1e-3;
        if !ok {
            return Err(MediaError::CorruptStream(format!(
                "{} has {} frames over {:.3} s; the source has {} over {:.3} s",
                r.name, r.frames, r.duration, plan.frames, plan.duration_seconds
            )));
        }
    }
    Ok(())
}

fn run_inner(
    req: &PipelineRequest,
    work: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<Manifest, MediaError> {
    report(req, Stage::Probe, 0, 1);
    report(req, Stage::Split, 0, 1);
    let fixed = req.slice_seconds;
    let prepared = prepare(
        &req.input,
        work,
        &|_| fixed,
        &req.limits,
        req.damage,
        req.deadline,
    )?;
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
    for (_, _, name) in plan_outputs(req.tier, plan.display_width, plan.display_height) {
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
