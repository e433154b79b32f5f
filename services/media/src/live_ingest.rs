//! Transcoding while the upload arrives: one upload chunk (a GOP-aligned MPEG-TS segment) is
//! encoded into the tier's ladder and packaged at once into its own HLS init and media
//! segments, which keep the upload's clock so that the chunks' segments, listed one after the
//! other, play as one stream. Completing the upload then only writes playlists.

use std::path::Path;

use vtx_domain::hls::MediaPlaylist;
use vtx_domain::live_ingest::{ChunkEncode, ChunkRendition, Segment};

use crate::encoder::Tier;
use crate::merge::{EncodedSlice, MergeRequest, merge_rendition};
use crate::pipeline::{EncodeOptions, plan_outputs};
use crate::transcode::{RenditionOutput, TranscodeRequest, transcode_ladder};
use crate::{Deadline, Limits, MediaError, VideoCodec, probe};

/// Where `encode_chunk` puts rendition `name`'s HLS files (init, segments, playlist).
pub fn chunk_hls_dir(out_dir: &Path, name: &str) -> std::path::PathBuf {
    out_dir.join("hls").join(name)
}

/// Encodes one chunk into every rendition of `tier` and packages each as HLS under
/// `chunk_hls_dir(out_dir, name)` (plus `{name}.mp4`, the chunk's rendition with its audio).
/// `rotation` is the one the upload declared (MPEG-TS carries none); a chunk's own wins.
pub fn encode_chunk(
    input: &Path,
    rotation: u32,
    tier: Tier,
    out_dir: &Path,
    limits: &Limits,
    options: &EncodeOptions,
    deadline: Deadline,
) -> Result<ChunkEncode, MediaError> {
    crate::init();
    std::fs::create_dir_all(out_dir)?;
    let p = probe(input, limits, deadline)?;
    let v = &p.video;
    let (rotation, (dw, dh)) = if v.rotation != 0 || rotation.is_multiple_of(360) {
        (v.rotation, (v.display_width, v.display_height))
    } else if rotation % 180 == 90 {
        (rotation % 360, (v.display_height, v.display_width))
    } else {
        (rotation % 360, (v.display_width, v.display_height))
    };
    // Capped at the chunk's own bitrate; no rung is dropped (every chunk of an upload must
    // have the same renditions, and a chunk does not know the others' bitrates).
    let limits = vtx_domain::LadderLimits {
        min_ratio: 0.0,
        ..vtx_domain::LadderLimits::for_source(v.bitrate)
    };
    let (outputs, names): (Vec<RenditionOutput>, Vec<String>) = plan_outputs(tier, dw, dh, &limits)
        .into_iter()
        .map(|(rung, codec, name)| {
            let out = RenditionOutput {
                path: out_dir.join(format!("enc-{name}.mp4")),
                rung,
                codec,
                crf: None,
            };
            (out, name)
        })
        .unzip();
    let request = TranscodeRequest {
        // Keyframes on the GOP grid of the upload's clock: the same grid in every chunk.
        timeline_offset: v.start_pts,
        frame_rate: Some(v.frame_rate_q),
        rotation,
        ..options.video_request(input, outputs.clone(), tier, deadline)
    };
    let reports = transcode_ladder(&request)?;
    let mut renditions = Vec::new();
    for ((out, report), name) in outputs.iter().zip(&reports).zip(&names) {
        // The encode starts at 0: it goes back onto the upload's clock.
        let video = EncodedSlice {
            path: out.path.clone(),
            offset: v.start_pts,
            offset_tb: v.time_base,
        };
        let size = (report.width, report.height);
        renditions.push(package_chunk_rendition(
            input, &p, video, out.codec, name, size, out_dir, deadline,
        )?);
        let _ = std::fs::remove_file(&out.path);
    }
    Ok(ChunkEncode {
        time_base: v.time_base,
        start: v.start_pts,
        end: v.end_pts,
        frames: v.frames,
        frame_rate: v.frame_rate_q,
        display_width: dw,
        display_height: dh,
        has_audio: p.audio.is_some(),
        renditions,
        concealed_video_frames: reports.first().map_or(0, |r| r.concealed.video_frames),
    })
}

/// Packages one video track of a chunk (an encode of it, or the chunk itself) with the chunk's
/// own audio, both on the upload's clock, as rendition `name`: HLS files under
/// `chunk_hls_dir(out_dir, name)` and `{name}.mp4`. `p` is the chunk's probe.
#[allow(clippy::too_many_arguments)]
pub(crate) fn package_chunk_rendition(
    input: &Path,
    p: &crate::Probe,
    video: EncodedSlice,
    codec: VideoCodec,
    name: &str,
    (width, height): (u32, u32),
    out_dir: &Path,
    deadline: Deadline,
) -> Result<ChunkRendition, MediaError> {
    let hls_dir = chunk_hls_dir(out_dir, name);
    let merged = merge_rendition(&MergeRequest {
        slices: vec![video],
        audio: p.audio.is_some().then(|| input.to_path_buf()),
        audio_offset: 0,
        codec,
        frame_rate: p.video.frame_rate_q,
        mp4: out_dir.join(format!("{name}.mp4")),
        hls_dir: Some(hls_dir.clone()),
        segment_seconds: 2.0,
        keep_timestamps: true,
        deadline,
    })?;
    let (init, segments) = read_playlist(&hls_dir.join("index.m3u8"))?;
    Ok(ChunkRendition {
        name: name.to_string(),
        codec: codec.label().to_string(),
        codec_string: merged.codec_string,
        width,
        height,
        frames: merged.frames,
        duration_seconds: merged.duration_seconds,
        init_bytes: std::fs::metadata(hls_dir.join(&init))?.len(),
        init,
        segments,
    })
}

/// The init segment and the media segments (with durations and sizes) of a media playlist
/// FFmpeg's HLS muxer wrote.
pub(crate) fn read_playlist(playlist: &Path) -> Result<(String, Vec<Segment>), MediaError> {
    let dir = playlist.parent().unwrap_or(Path::new("."));
    let list = MediaPlaylist::parse(&std::fs::read_to_string(playlist)?);
    let init = list
        .init()
        .ok_or_else(|| MediaError::CorruptStream("HLS playlist without an init segment".into()))?
        .to_string();
    let mut segments = Vec::new();
    for s in list.segments {
        segments.push(Segment {
            bytes: std::fs::metadata(dir.join(&s.uri))?.len(),
            seconds: s.seconds.unwrap_or(0.0),
            uri: s.uri,
        });
    }
    Ok((init, segments))
}
