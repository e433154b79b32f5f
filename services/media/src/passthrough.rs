//! Instant publish of standard inputs: an upload chunk that players can already play as it is
//! (H.264 with closed GOPs, AAC, within the configured caps) is remuxed, without re-encoding,
//! into the same per-chunk HLS layout the fast tier's chunk encodes use, so that completing the
//! upload only writes playlists. What "standard" means is `InstantPolicy`; `standard_chunk`
//! says why a chunk is not.

use std::path::Path;

use ffmpeg_next::{Packet, media};
use vtx_domain::live_ingest::{ChunkEncode, InstantPolicy};

use crate::live_ingest::package_chunk_rendition;
use crate::merge::EncodedSlice;
use crate::probe::{next_packet, open_input};
use crate::{Deadline, Limits, MediaError, VideoCodec, probe};

/// The one rendition of an instant tier.
pub const SOURCE_RENDITION: &str = "source";

/// H.264 profiles every player decodes: constrained baseline (66 with FFmpeg's constrained
/// flag, 578), baseline, main and high (8-bit 4:2:0). Extended, High 10, 4:2:2 and 4:4:4 are
/// not decoded by browsers' media stacks.
const PLAYABLE_H264_PROFILES: [i32; 4] = [66, 578, 77, 100];

/// The highest frame rate published as it is (a 120 fps slow-motion clip is not).
const MAX_FRAME_RATE: f64 = 60.0;

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
    if v.frame_rate > MAX_FRAME_RATE {
        return Ok(Err(format!("{:.0} frames per second", v.frame_rate)));
    }
    let scan = scan_video(path, deadline)?;
    if !PLAYABLE_H264_PROFILES.contains(&scan.profile) {
        return Ok(Err(format!("H.264 profile {}", scan.profile)));
    }
    if scan.interlaced {
        return Ok(Err("interlaced".into()));
    }
    if let Some(profile) = scan.audio_profile
        && profile != AAC_LC
    {
        // The master playlist announces AAC-LC (mp4a.40.2).
        return Ok(Err(format!(
            "AAC profile {profile} (instant publish takes AAC-LC)"
        )));
    }
    if let Some(why) = scan.not_independent {
        return Ok(Err(why));
    }
    Ok(Ok(()))
}

/// FFmpeg's profile number of AAC-LC.
const AAC_LC: i32 = 1;

struct VideoScan {
    profile: i32,
    interlaced: bool,
    /// The audio stream's profile, when the container says.
    audio_profile: Option<i32>,
    /// Why a player could not start at each keyframe: a keyframe that is not an IDR picture (a
    /// recovery point, an intra refresh, an open GOP's I picture), a frame after a keyframe in
    /// decode order shown before it (it refers to the GOP before), or a frame without a time.
    not_independent: Option<String>,
}

/// Whether an H.264 access unit (Annex B, as MPEG-TS carries it) holds an IDR slice (NAL type 5).
fn holds_idr(data: &[u8]) -> bool {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if data[i + 3] & 0x1f == 5 {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

fn scan_video(path: &Path, deadline: Deadline) -> Result<VideoScan, MediaError> {
    let mut ictx = open_input(path)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let index = stream.index();
    // SAFETY: reads plain fields of the stream's live parameters.
    let (profile, field_order) = unsafe {
        let par = stream.parameters().as_ptr();
        ((*par).profile, (*par).field_order)
    };
    use ffmpeg_next::ffi::AVFieldOrder;
    let interlaced = !matches!(
        field_order,
        AVFieldOrder::AV_FIELD_PROGRESSIVE | AVFieldOrder::AV_FIELD_UNKNOWN
    );
    let audio_profile = ictx.streams().best(media::Type::Audio).and_then(|a| {
        // SAFETY: as above.
        let profile = unsafe { (*a.parameters().as_ptr()).profile };
        (profile >= 0).then_some(profile)
    });
    let mut last_key: Option<i64> = None;
    let mut not_independent = None;
    let mut p = Packet::empty();
    while not_independent.is_none() && next_packet(&mut ictx, &mut p)? {
        deadline.check()?;
        if p.stream() != index {
            continue;
        }
        let Some(pts) = p.pts() else {
            not_independent = Some("a frame without a presentation time".into());
            break;
        };
        if p.is_key() {
            if !p.data().is_some_and(holds_idr) {
                not_independent = Some(
                    "a keyframe that is not an IDR picture (recovery point, intra refresh or open GOP)"
                        .into(),
                );
            }
            last_key = Some(last_key.map_or(pts, |k| k.max(pts)));
        } else if last_key.is_some_and(|k| pts < k) {
            not_independent = Some("open GOP (frames after a keyframe are shown before it)".into());
        }
    }
    Ok(VideoScan {
        profile,
        interlaced,
        audio_profile,
        not_independent,
    })
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
    // The chunk's packets keep their own times: no offset.
    let video = EncodedSlice {
        path: input.to_path_buf(),
        offset: 0,
        offset_tb: v.time_base,
    };
    let size = (v.display_width, v.display_height);
    let rendition = package_chunk_rendition(
        input,
        &p,
        video,
        VideoCodec::H264,
        SOURCE_RENDITION,
        size,
        out_dir,
        deadline,
    )?;
    // Only the HLS files are used (the tier's MP4 is muxed from them).
    let _ = std::fs::remove_file(out_dir.join(format!("{SOURCE_RENDITION}.mp4")));
    Ok(ChunkEncode {
        time_base: v.time_base,
        start: v.start_pts,
        end: v.end_pts,
        frames: v.frames,
        frame_rate: v.frame_rate_q,
        display_width: v.display_width,
        display_height: v.display_height,
        has_audio: p.audio.is_some(),
        renditions: vec![rendition],
        concealed_video_frames: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::holds_idr;

    #[test]
    fn an_idr_slice_is_found_behind_any_start_code() {
        // AUD, SPS, then an IDR slice behind a three-byte start code.
        let idr = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x64, 0, 0, 1, 0x65, 0x88,
        ];
        assert!(holds_idr(&idr));
        // A recovery point SEI and a non-IDR I slice: key to the demuxer, not an IDR.
        let recovery = [0, 0, 0, 1, 0x06, 0x06, 0x01, 0xc4, 0, 0, 0, 1, 0x41, 0x9a];
        assert!(!holds_idr(&recovery));
        assert!(!holds_idr(&[]));
    }
}
