//! The whole media job on one machine: probe, plan slices, split, encode the audio once and the
//! slices in parallel, merge each rung into MP4 + HLS, write the master playlist, the cover and
//! the manifest. `vtx transcode` runs this; workers run its stages one at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vtx_domain::{Rung, plan_ladder, plan_slices};

use crate::encoder::{Tier, VideoCodec};
use crate::hls::{Variant, master_playlist, playlist_bitrates};
use crate::merge::{EncodedSlice, MergeRequest, merge_rendition};
use crate::split::split_video;
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
    tier.codecs()
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

fn run_inner(
    req: &PipelineRequest,
    work: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<Manifest, MediaError> {
    report(req, Stage::Probe, 0, 1);
    let source = probe(&req.input, &req.limits, req.deadline)?;
    let v = &source.video;
    report(req, Stage::Probe, 1, 1);

    // Plan the slices on the GOP index.
    let tb = v.time_base;
    // Decoding starts at the last keyframe at or before the first shown frame (an edit list may
    // hide a few frames after it); later cuts are keyframes inside the shown span.
    let mut keys: Vec<i64> = v.keyframes.iter().map(|k| k.pts).collect();
    keys.sort_unstable();
    keys.dedup();
    let lead = keys.iter().rev().find(|&&k| k <= v.start_pts).copied();
    keys.retain(|&k| k > v.start_pts || Some(k) == lead);
    let ticks_per_second = f64::from(tb.1) / f64::from(tb.0);
    let target = if req.slice_seconds > 0.0 {
        (req.slice_seconds * ticks_per_second).round() as i64
    } else {
        i64::MAX / 4
    };
    let windows = plan_slices(&keys, v.end_pts, target);

    report(req, Stage::Split, 0, windows.len() as u64);
    let slices = split_video(&req.input, &source, &windows, work, req.deadline)?;
    report(
        req,
        Stage::Split,
        windows.len() as u64,
        windows.len() as u64,
    );

    let outputs = plan_outputs(req.tier, v.display_width, v.display_height);
    // Output time 0 is the first shown frame; a slice's place on that timeline:
    let shown = v.start_pts;
    let offset_of = |w: &vtx_domain::SliceWindow| w.start.max(shown) - shown;

    // Encode: the audio once, and every slice's ladder, on `jobs` threads.
    let audio_path = work.join("audio.m4a");
    let total_frames = v.frames;
    let encoded = Arc::new(AtomicU64::new(0));
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<MediaError>> = Mutex::new(None);
    let has_audio = std::thread::scope(|scope| {
        // The audio is encoded once, beside the slices (it costs a fraction of one of them).
        let audio = scope
            .spawn(|| encode_audio(&req.input, &audio_path, shown, v.end_pts, tb, req.deadline));
        for _ in 0..req.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if failure.lock().expect("lock").is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(slice) = slices.get(i) else {
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
                    let request = TranscodeRequest {
                        input: slice.path.clone(),
                        // Slice files start at their keyframe; frames before `shown` stay hidden.
                        window: Some(Window {
                            start: shown.max(slice.window.start) - slice.window.start,
                            end: slice.window.end - slice.window.start,
                            time_base: tb,
                        }),
                        timeline_offset: offset_of(&slice.window),
                        outputs: outputs
                            .iter()
                            .map(|(rung, codec, name)| RenditionOutput {
                                rung: rung.clone(),
                                codec: *codec,
                                path: work
                                    .join(format!("enc-{:05}-{name}.mp4", slice.window.index)),
                            })
                            .collect(),
                        tier: req.tier,
                        gop_seconds: 2.0,
                        frame_rate: Some(v.frame_rate_q),
                        variable_frame_rate: v.variable_frame_rate,
                        rotation: v.rotation,
                        watermark: req.watermark.clone(),
                        audio: false,
                        threads: req.threads,
                        deadline: req.deadline,
                        progress: Some(progress),
                    };
                    if let Err(e) = transcode_ladder(&request) {
                        failure.lock().expect("lock").get_or_insert(e);
                        return;
                    }
                }
            });
        }
        audio.join().unwrap_or_else(|_| {
            Err(MediaError::Io(std::io::Error::other(
                "audio encoder panicked",
            )))
        })
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    let has_audio = has_audio?;

    // Merge each rendition.
    let hls_root = req.out_dir.join("hls");
    let mut renditions = Vec::new();
    let mut variants = Vec::new();
    for (n, (rung, codec, name)) in outputs.iter().enumerate() {
        report(req, Stage::Merge, n as u64, outputs.len() as u64);
        let mp4 = req.out_dir.join(format!("{name}.mp4"));
        written.push(mp4.clone());
        let hls_dir = req.hls.then(|| hls_root.join(name));
        if let Some(d) = &hls_dir {
            written.push(d.clone());
        }
        let merged = merge_rendition(&MergeRequest {
            slices: slices
                .iter()
                .map(|s| EncodedSlice {
                    path: work.join(format!("enc-{:05}-{name}.mp4", s.window.index)),
                    offset: offset_of(&s.window),
                    offset_tb: tb,
                })
                .collect(),
            audio: has_audio.then(|| audio_path.clone()),
            codec: *codec,
            frame_rate: v.frame_rate_q,
            mp4: mp4.clone(),
            hls_dir: hls_dir.clone(),
            segment_seconds: 2.0,
            deadline: req.deadline,
        })?;
        let codecs = if has_audio {
            format!("{},mp4a.40.2", merged.codec_string)
        } else {
            merged.codec_string.clone()
        };
        let playlist = hls_dir.as_ref().map(|d| d.join("index.m3u8"));
        if let Some(pl) = &playlist {
            let (peak, average) = playlist_bitrates(pl)?;
            variants.push(Variant {
                uri: format!("{name}/index.m3u8"),
                width: rung.width,
                height: rung.height,
                frame_rate: v.frame_rate,
                codecs,
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
    report(
        req,
        Stage::Merge,
        outputs.len() as u64,
        outputs.len() as u64,
    );
    let hls_master = if req.hls && !variants.is_empty() {
        let master = hls_root.join("master.m3u8");
        std::fs::write(&master, master_playlist(&variants))?;
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
            let path = req.out_dir.join("cover.jpg");
            written.push(path.clone());
            write_cover(&req.out_dir.join(&top.file), &path, req.deadline)?;
            Some("cover.jpg".to_string())
        }
        None => None,
    };

    if req.quality {
        report(req, Stage::Quality, 0, 1);
        let files: Vec<PathBuf> = renditions
            .iter()
            .map(|r| req.out_dir.join(&r.file))
            .collect();
        let q: Vec<Quality> = measure(&req.input, v.rotation, &files, req.deadline)?;
        for (r, q) in renditions.iter_mut().zip(q) {
            r.psnr = Some((q.psnr * 100.0).round() / 100.0);
            r.ssim = Some((q.ssim * 10_000.0).round() / 10_000.0);
        }
        report(req, Stage::Quality, 1, 1);
    }

    let manifest = Manifest {
        source,
        tier: req.tier,
        slices: slices.len(),
        renditions,
        hls_master,
        cover,
        audio: has_audio,
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
