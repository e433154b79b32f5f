//! Upload chunks: GOP-aligned MPEG-TS segments.
//!
//! An app uploads a video as a run of chunks, each a self-contained MPEG-TS segment (as in HLS)
//! that starts on a video keyframe and holds whole GOPs. MPEG-TS is chosen because each segment
//! parses on its own (so the gateway can check a chunk the moment it arrives, in any order) and
//! the segments concatenated in order are again a valid stream: the source, byte for byte.
//!
//! [`cut_chunks`] makes such chunks from a file by remuxing (no re-encode), as a phone that
//! records would; [`inspect_chunk`] checks one on arrival.

use std::path::{Path, PathBuf};

use ffmpeg_next::{Packet, Rational, codec, format, media};
use serde::{Deserialize, Serialize};

use crate::probe::{is_discarded, next_packet, open_input};
use crate::{Deadline, Limits, MediaError};

/// What the gateway learns from one chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Presentation span of the chunk's video, in seconds on the stream's clock.
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub frames: u64,
    pub keyframes: u32,
    pub has_audio: bool,
}

/// Why a chunk is refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk must be an MPEG-TS segment holding video ({0})")]
    NotMedia(String),
    #[error("the chunk does not start on a video keyframe; cut chunks at GOP boundaries")]
    NotGopAligned,
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// Checks one uploaded chunk: it is MPEG-TS, it holds accepted video within `limits`, and its
/// first video packet (in decode order) is a keyframe.
pub fn inspect_chunk(
    path: &Path,
    limits: &Limits,
    deadline: Deadline,
) -> Result<ChunkInfo, ChunkError> {
    crate::init();
    let mut opts = ffmpeg_next::Dictionary::new();
    opts.set("format_whitelist", "mpegts");
    let mut ictx = format::input_with_dictionary(path, opts)
        .map_err(|e| ChunkError::NotMedia(format!("not MPEG-TS: {e}")))?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .map(|s| s.index())
        .ok_or_else(|| ChunkError::NotMedia("no video stream".into()))?;
    let mut packet = Packet::empty();
    loop {
        deadline.check()?;
        if !next_packet(&mut ictx, &mut packet)? {
            return Err(ChunkError::NotMedia("no video packets".into()));
        }
        if packet.stream() == video {
            if !packet.is_key() {
                return Err(ChunkError::NotGopAligned);
            }
            break;
        }
    }
    drop(ictx);
    // The full probe: codec allowlist, limits, every packet readable, the GOP index.
    let p = crate::probe(path, limits, deadline)?;
    let tb = p.video.time_base;
    let seconds = |t: i64| t as f64 * f64::from(tb.0) / f64::from(tb.1);
    Ok(ChunkInfo {
        start_seconds: seconds(p.video.start_pts),
        end_seconds: seconds(p.video.end_pts),
        frames: p.video.frames,
        keyframes: p.video.keyframes.len() as u32,
        has_audio: p.audio.is_some(),
    })
}

/// Clockwise degrees `input`'s video is turned for display (its display matrix), which MPEG-TS
/// chunks cannot carry: a client declares it when it opens the upload session.
pub fn source_rotation(input: &Path) -> Result<u32, MediaError> {
    crate::init();
    let ictx = open_input(input)?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    Ok(crate::probe::display_rotation(&video))
}

/// One chunk cut from a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CutChunk {
    pub index: u32,
    pub path: PathBuf,
    /// Where the chunk's video starts and ends on the source's clock, in seconds (the end is
    /// the next chunk's start, or the last frame's end).
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub bytes: u64,
}

/// Why a file cannot be cut into chunks (it can still be uploaded whole, over tus).
fn cannot_cut(why: impl Into<String>) -> MediaError {
    MediaError::NotChunkable(why.into())
}

struct ChunkWriter {
    octx: format::context::Output,
    path: PathBuf,
    index: u32,
    start_seconds: f64,
}

/// Remuxes `input` into MPEG-TS chunks of at least `target_seconds` each (cut only at video
/// keyframes) under `dir`, named `chunk-00000.ts`, ... The video stream and the best audio
/// stream are kept; timestamps are kept as they are (shifted only so none is negative), so the
/// chunks concatenated are one continuous stream. On error no chunk file is left behind.
pub fn cut_chunks(
    input: &Path,
    dir: &Path,
    target_seconds: f64,
    deadline: Deadline,
) -> Result<Vec<CutChunk>, MediaError> {
    crate::init();
    let mut made: Vec<PathBuf> = Vec::new();
    let result = cut_inner(input, dir, target_seconds.max(0.1), deadline, &mut made);
    if result.is_err() {
        for p in &made {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn cut_inner(
    input: &Path,
    dir: &Path,
    target_seconds: f64,
    deadline: Deadline,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<CutChunk>, MediaError> {
    let mut ictx = open_input(input)?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = video.index();
    let audio = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    // Input stream index -> (output stream index, input time base, parameters).
    let mut streams: Vec<(usize, usize, Rational, codec::Parameters)> = Vec::new();
    for (out, idx) in std::iter::once(v_index).chain(audio).enumerate() {
        let s = ictx.stream(idx).expect("index from the same context");
        streams.push((idx, out, s.time_base(), s.parameters()));
    }
    let v_codec = streams[0].3.id();
    if !matches!(
        v_codec,
        codec::Id::H264 | codec::Id::HEVC | codec::Id::MPEG2VIDEO | codec::Id::MPEG4
    ) {
        return Err(cannot_cut(format!(
            "{v_codec:?} video does not go into MPEG-TS"
        )));
    }
    if let Some(a) = streams.get(1) {
        let id = a.3.id();
        if !matches!(
            id,
            codec::Id::AAC | codec::Id::MP3 | codec::Id::MP2 | codec::Id::AC3 | codec::Id::OPUS
        ) {
            return Err(cannot_cut(format!("{id:?} audio does not go into MPEG-TS")));
        }
    }

    // First pass, over the opening packets: the offset that keeps every timestamp
    // non-negative must be known before the first chunk is written (MPEG-TS has no negative
    // timestamps; B-frames give MP4 sources negative decode times).
    let mut min_seconds = 0.0f64;
    let mut packet = Packet::empty();
    let mut scanned = 0;
    while scanned < 600 && next_packet(&mut ictx, &mut packet)? {
        deadline.check()?;
        if let Some(&(_, _, tb, _)) = streams.iter().find(|s| s.0 == packet.stream()) {
            scanned += 1;
            if let Some(t) = packet.dts().or(packet.pts()) {
                min_seconds = min_seconds.min(t as f64 * f64::from(tb));
            }
        }
    }
    drop(ictx);
    let shift_seconds = -min_seconds;
    let mut ictx = open_input(input)?;

    let mut chunks = Vec::new();
    let mut writer: Option<ChunkWriter> = None;
    let mut video_end = 0.0f64;
    while next_packet(&mut ictx, &mut packet)? {
        deadline.check()?;
        let Some(&(_, out, in_tb, _)) = streams.iter().find(|s| s.0 == packet.stream()) else {
            continue;
        };
        let is_video = packet.stream() == v_index;
        if is_discarded(&packet) {
            if is_video {
                // An edit list hides these frames; MPEG-TS cannot say so.
                return Err(cannot_cut("the video has an edit list that hides frames"));
            }
            continue; // audio priming: dropped
        }
        let seconds = |t: i64| t as f64 * f64::from(in_tb) + shift_seconds;
        if is_video && let Some(pts) = packet.pts() {
            video_end = video_end.max(seconds(pts + packet.duration().max(0)));
        }
        let starts_chunk = is_video
            && packet.is_key()
            && match &writer {
                None => true,
                Some(w) => packet
                    .pts()
                    .is_some_and(|pts| seconds(pts) - w.start_seconds >= target_seconds),
            };
        if starts_chunk {
            let start_seconds = packet.pts().map(seconds).unwrap_or(video_end);
            if let Some(w) = writer.take() {
                chunks.push(finish(w, start_seconds)?);
            }
            let index = chunks.len() as u32;
            let path = dir.join(format!("chunk-{index:05}.ts"));
            made.push(path.clone());
            writer = Some(open_chunk(&path, index, start_seconds, &streams)?);
        }
        let Some(w) = writer.as_mut() else {
            continue; // audio before the first video keyframe: no chunk holds it
        };
        // A frame after a cut shown before the cut's keyframe is an open GOP's leading frame:
        // it needs the previous chunk's frames to decode, so it would be lost at the join.
        if is_video
            && !starts_chunk
            && w.index > 0
            && packet
                .pts()
                .is_some_and(|pts| seconds(pts) < w.start_seconds - 1e-6)
        {
            return Err(cannot_cut(
                "open GOPs: frames after a keyframe are shown before it",
            ));
        }
        let shift = (shift_seconds / f64::from(in_tb)).ceil() as i64;
        packet.set_pts(packet.pts().map(|t| t + shift));
        packet.set_dts(packet.dts().map(|t| t + shift));
        packet.set_stream(out);
        packet.set_position(-1);
        let ost_tb = w.octx.stream(out).expect("stream added").time_base();
        packet.rescale_ts(in_tb, ost_tb);
        packet
            .write_interleaved(&mut w.octx)
            .map_err(MediaError::ffmpeg("writing a chunk"))?;
    }
    if let Some(w) = writer.take() {
        chunks.push(finish(w, video_end)?);
    }
    if chunks.is_empty() {
        return Err(MediaError::CorruptStream("no video keyframe".into()));
    }
    Ok(chunks)
}

fn open_chunk(
    path: &Path,
    index: u32,
    start_seconds: f64,
    streams: &[(usize, usize, Rational, codec::Parameters)],
) -> Result<ChunkWriter, MediaError> {
    let mut octx =
        format::output_as(path, "mpegts").map_err(MediaError::ffmpeg("creating a chunk"))?;
    for (_, _, tb, par) in streams {
        let mut ost = octx
            .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
            .map_err(MediaError::ffmpeg("adding a chunk stream"))?;
        ost.set_parameters(par.clone());
        ost.set_time_base(*tb);
        unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
    }
    let mut opts = ffmpeg_next::Dictionary::new();
    // Keep the source's clock: every chunk is a piece of one continuous stream.
    opts.set("mpegts_copyts", "1");
    opts.set("avoid_negative_ts", "disabled");
    octx.write_header_with(opts)
        .map_err(MediaError::ffmpeg("writing a chunk header"))?;
    Ok(ChunkWriter {
        octx,
        path: path.to_path_buf(),
        index,
        start_seconds,
    })
}

fn finish(mut w: ChunkWriter, end_seconds: f64) -> Result<CutChunk, MediaError> {
    w.octx
        .write_trailer()
        .map_err(MediaError::ffmpeg("finishing a chunk"))?;
    let bytes = std::fs::metadata(&w.path)?.len();
    Ok(CutChunk {
        index: w.index,
        path: w.path,
        start_seconds: w.start_seconds,
        end_seconds,
        bytes,
    })
}
