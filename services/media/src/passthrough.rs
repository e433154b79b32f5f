//! Instant publish of standard inputs: an upload chunk that players can already play as it is
//! (H.264 with closed GOPs, AAC, within the configured caps) is remuxed, without re-encoding,
//! into the same per-chunk HLS layout the fast tier's chunk encodes use, so that completing the
//! upload only writes playlists. What "standard" means is `InstantPolicy`; `standard_chunk`
//! says why a chunk is not.

use std::path::Path;

use ffmpeg_next::{Packet, media};
use vtx_domain::live_ingest::{ChunkEncode, ChunkRendition, InstantPolicy};

use crate::live_ingest::{chunk_hls_dir, read_playlist};
use crate::merge::{EncodedSlice, MergeRequest, merge_rendition};
use crate::probe::{next_packet, open_input};
use crate::{Deadline, Limits, MediaError, VideoCodec, probe};

/// The one rendition of an instant tier.
pub const SOURCE_RENDITION: &str = "source";

/// H.264 profiles every player decodes (baseline, constrained baseline, main, extended, high:
/// 8-bit 4:2:0); High 10, 4:2:2 and 4:4:4 are not.
const PLAYABLE_H264_PROFILES: [i32; 4] = [66, 77, 88, 100];

/// Why the chunk at `path` cannot be published as it is, or `Ok` when it can.
pub fn standard_chunk(
    path: &Path,
    policy: &InstantPolicy,
    limits: &Limits,
    deadline: Deadline,
) -> Result<Result<(), String>, MediaError> {
    crate::init();
    let p = probe(path, limits, deadline)?;
    let v = &p.video;
    if v.codec != "h264" {
        return Ok(Err(format!(
            "video codec {} (instant publish takes H.264)",
            v.codec
        )));
    }
    if !matches!(v.pixel_format.as_str(), "yuv420p" | "yuvj420p") {
        return Ok(Err(format!("pixel format {}", v.pixel_format)));
    }
    let (long, short) = (
        v.display_width.max(v.display_height),
        v.display_width.min(v.display_height),
    );
    if long > policy.max_long_side || short > policy.max_short_side {
        return Ok(Err(format!(
            "{}x{} is above {}x{}",
            v.display_width, v.display_height, policy.max_long_side, policy.max_short_side
        )));
    }
    if v.rotation != 0 {
        return Ok(Err(format!("rotated {} degrees", v.rotation)));
    }
    if let Some(a) = &p.audio
        && a.codec != "aac"
    {
        return Ok(Err(format!(
            "audio codec {} (instant publish takes AAC)",
            a.codec
        )));
    }
    let tb = f64::from(v.time_base.0) / f64::from(v.time_base.1);
    let seconds = (v.end_pts - v.start_pts) as f64 * tb;
    if seconds > 0.0 {
        let bitrate = (p.size_bytes as f64 * 8.0 / seconds) as u64;
        if bitrate > policy.max_bitrate {
            return Ok(Err(format!(
                "{bitrate} b/s is above the cap of {} b/s",
                policy.max_bitrate
            )));
        }
    }
    let mut keys: Vec<i64> = v.keyframes.iter().map(|k| k.pts).collect();
    keys.sort_unstable();
    keys.push(v.end_pts);
    let longest = keys.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) as f64 * tb;
    if longest > policy.max_gop_seconds {
        return Ok(Err(format!(
            "keyframes {longest:.1} s apart (at most {} s)",
            policy.max_gop_seconds
        )));
    }
    let scan = scan_video(path, deadline)?;
    if !PLAYABLE_H264_PROFILES.contains(&scan.profile) {
        return Ok(Err(format!("H.264 profile {}", scan.profile)));
    }
    if scan.open_gop {
        return Ok(Err(
            "open GOP (frames after a keyframe are shown before it)".into(),
        ));
    }
    Ok(Ok(()))
}

struct VideoScan {
    profile: i32,
    /// A frame that follows a keyframe in decode order is shown before it: it refers to the
    /// GOP before (an open GOP), so a player starting at that keyframe cannot show it.
    open_gop: bool,
}

fn scan_video(path: &Path, deadline: Deadline) -> Result<VideoScan, MediaError> {
    let mut ictx = open_input(path)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let index = stream.index();
    // SAFETY: reads a plain field of the stream's live parameters.
    let profile = unsafe { (*stream.parameters().as_ptr()).profile };
    let mut last_key: Option<i64> = None;
    let mut open_gop = false;
    let mut p = Packet::empty();
    while next_packet(&mut ictx, &mut p)? {
        deadline.check()?;
        if p.stream() != index {
            continue;
        }
        let Some(pts) = p.pts() else { continue };
        if p.is_key() {
            last_key = Some(last_key.map_or(pts, |k| k.max(pts)));
        } else if last_key.is_some_and(|k| pts < k) {
            open_gop = true;
            break;
        }
    }
    Ok(VideoScan { profile, open_gop })
}

/// Remuxes a standard chunk (see `standard_chunk`) into one HLS rendition, `SOURCE_RENDITION`,
/// under `chunk_hls_dir(out_dir, SOURCE_RENDITION)`: init and CMAF segments that keep the
/// upload's clock, like a chunk encode's, with the chunk's own audio. No frame is decoded.
pub fn remux_chunk(
    input: &Path,
    out_dir: &Path,
    limits: &Limits,
    deadline: Deadline,
) -> Result<ChunkEncode, MediaError> {
    crate::init();
    std::fs::create_dir_all(out_dir)?;
    let p = probe(input, limits, deadline)?;
    let v = &p.video;
    let hls_dir = chunk_hls_dir(out_dir, SOURCE_RENDITION);
    let mp4 = out_dir.join(format!("{SOURCE_RENDITION}.mp4"));
    let merged = merge_rendition(&MergeRequest {
        // The chunk's packets keep their own times: no offset.
        slices: vec![EncodedSlice {
            path: input.to_path_buf(),
            offset: 0,
            offset_tb: v.time_base,
        }],
        audio: p.audio.is_some().then(|| input.to_path_buf()),
        audio_offset: 0,
        codec: VideoCodec::H264,
        frame_rate: v.frame_rate_q,
        mp4: mp4.clone(),
        hls_dir: Some(hls_dir.clone()),
        segment_seconds: 2.0,
        keep_timestamps: true,
        deadline,
    })?;
    let _ = std::fs::remove_file(&mp4);
    let (init, segments) = read_playlist(&hls_dir.join("index.m3u8"))?;
    Ok(ChunkEncode {
        time_base: v.time_base,
        start: v.start_pts,
        end: v.end_pts,
        frames: v.frames,
        frame_rate: v.frame_rate_q,
        display_width: v.display_width,
        display_height: v.display_height,
        has_audio: p.audio.is_some(),
        renditions: vec![ChunkRendition {
            name: SOURCE_RENDITION.to_string(),
            codec: VideoCodec::H264.label().to_string(),
            codec_string: merged.codec_string,
            width: v.display_width,
            height: v.display_height,
            frames: merged.frames,
            duration_seconds: merged.duration_seconds,
            init_bytes: std::fs::metadata(hls_dir.join(&init))?.len(),
            init,
            segments,
        }],
        concealed_video_frames: 0,
    })
}
