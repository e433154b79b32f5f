//! The stages a cluster runs one at a time: prepare a job (probe, plan, split, audio once),
//! encode one slice, package a tier, verify it against the plan.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vtx_domain::{
    Grid, JobPlan, LadderLimits, QualityTarget, Rung, plan_ladder_within, plan_slices_on_grid,
};

use crate::conceal::DamagePolicy;
use crate::encoder::{Tier, VideoCodec, tier_codecs};
use crate::hls::{Variant, master_playlist, playlist_bitrates};
use crate::merge::{EncodedSlice, MergeRequest, merge_rendition};
use crate::per_title::{Choice, Search, choose_crfs};
use crate::split::{SliceFile, split_video};
use crate::transcode::{
    FrameProgress, RenditionOutput, TranscodeRequest, Window, transcode_ladder,
};
use crate::{Deadline, Limits, MediaError, Probe, encode_audio, probe, write_cover};

use crate::pipeline::*;

/// The renditions of a tier: every codec of the tier times every rung of the ladder the
/// source's size and bitrate allow (`LadderLimits`).
pub fn plan_outputs(
    tier: Tier,
    display_width: u32,
    display_height: u32,
    limits: &LadderLimits,
) -> Vec<(Rung, VideoCodec, String)> {
    let ladder = plan_ladder_within(display_width, display_height, limits);
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
        ladder: LadderLimits::for_source(v.bitrate),
        profile: None,
        psychovisual: None,
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
pub(crate) const GOP_SECONDS: f64 = 2.0;

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
    /// The high and extreme tiers choose each rendition's rate factor per slice to reach this
    /// (`per_title`); `None`: the tier's fixed rate factor (quality first).
    pub quality_target: Option<QualityTarget>,
    /// `TranscodeRequest::psychovisual` (a plan's own setting, from an experiment, wins).
    pub psychovisual: bool,
    /// The `vmaf` tool, for a VMAF quality target.
    pub vmaf_tool: Option<PathBuf>,
}

impl EncodeOptions {
    /// A video-only ladder encode of `input` with these options (audio is encoded once per
    /// job, apart); the caller sets the window, the clock and the rotation.
    pub(crate) fn video_request(
        &self,
        input: &Path,
        outputs: Vec<RenditionOutput>,
        tier: Tier,
        deadline: Deadline,
    ) -> TranscodeRequest {
        TranscodeRequest {
            input: input.to_path_buf(),
            window: None,
            timeline_offset: 0,
            outputs,
            tier,
            gop_seconds: GOP_SECONDS,
            frame_rate: None,
            rotation: 0,
            watermark: self.watermark.clone(),
            audio: false,
            threads: self.threads,
            h264_encoder: self.h264_encoder.clone(),
            crf: None,
            psychovisual: self.psychovisual,
            damage: self.damage,
            deadline,
            progress: self.progress.clone(),
        }
    }
}

/// What a slice encode wrote.
#[derive(Clone, Debug)]
pub struct SliceEncode {
    /// One file per rendition, `encoded_slice_path(out_dir, index, name)`.
    pub paths: Vec<PathBuf>,
    /// Frames of the slice's window that could not be decoded and were concealed.
    pub concealed_video_frames: u64,
    /// The rate factor chosen for each rendition (name) when a quality target was set.
    pub per_title: Vec<(String, Choice)>,
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
    let mut outputs: Vec<RenditionOutput> =
        plan_outputs(tier, plan.display_width, plan.display_height, &plan.ladder)
            .into_iter()
            .map(|(rung, codec, name)| RenditionOutput {
                path: encoded_slice_path(out_dir, index, &name),
                rung,
                codec,
                crf: None,
            })
            .collect();
    let paths = outputs.iter().map(|o| o.path.clone()).collect();
    let window = Window {
        start,
        end,
        time_base: plan.time_base,
    };
    let mut per_title = Vec::new();
    let psychovisual = plan.psychovisual.unwrap_or(options.psychovisual);
    let target = match plan.profile {
        Some(profile) => profile.target(),
        None => options.quality_target,
    };
    // A GPU H.264 encoder takes no rate factor: its outputs are not searched.
    let searched: Vec<usize> = (0..outputs.len())
        .filter(|&i| options.h264_encoder.is_none() || outputs[i].codec != VideoCodec::H264)
        .collect();
    if let Some(target) = target.filter(|_| matches!(tier, Tier::High | Tier::Extreme))
        && !searched.is_empty()
    {
        let scratch = out_dir.join(format!(".vtx-work-per-title-{index}"));
        let subset: Vec<RenditionOutput> = searched.iter().map(|&i| outputs[i].clone()).collect();
        let chosen = choose_crfs(
            &Search {
                input: slice_file,
                window,
                frame_rate: plan.frame_rate,
                rotation: plan.rotation,
                tier,
                target,
                psychovisual,
                vmaf: options.vmaf_tool.as_deref(),
                threads: options.threads,
                scratch: &scratch,
                deadline,
            },
            &subset,
        );
        let _ = std::fs::remove_dir_all(&scratch);
        match chosen {
            Ok(chosen) => {
                for (&i, c) in searched.iter().zip(chosen) {
                    let o = &mut outputs[i];
                    o.crf = Some(c.crf);
                    per_title.push((o.rung.name.clone() + "-" + o.codec.label(), c));
                }
            }
            // The slice still encodes, at the tier's fixed rate factors.
            Err(e) => tracing::warn!(slice = index, error = %e, "per-title search failed"),
        }
    }
    let request = TranscodeRequest {
        window: Some(window),
        timeline_offset: plan.offset_of(w),
        frame_rate: Some(plan.frame_rate),
        rotation: plan.rotation,
        psychovisual,
        ..options.video_request(slice_file, outputs, tier, deadline)
    };
    let reports = transcode_ladder(&request)?;
    Ok(SliceEncode {
        paths,
        concealed_video_frames: reports.first().map_or(0, |r| r.concealed.video_frames),
        per_title,
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
    let outputs = plan_outputs(tier, plan.display_width, plan.display_height, &plan.ladder);
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
    let source = vtx_domain::plan::SourceTiming {
        frames: plan.frames,
        seconds: plan.duration_seconds,
        frame_seconds: f64::from(plan.frame_rate.1) / f64::from(plan.frame_rate.0),
    };
    for r in &packaged.renditions {
        source
            .check(&r.name, r.frames, r.duration, 1)
            .map_err(MediaError::CorruptStream)?;
    }
    Ok(())
}
