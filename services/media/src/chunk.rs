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
/// chunks concatenated are one continuous stream. Every audio packet goes into the chunk whose
/// video span holds its time (audio before the first frame into the first chunk, after the last
/// into the last), wherever the file stores it. On error no chunk file is left behind.
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

/// Chunks kept open at once while the audio stored in the file lags behind the video.
const MAX_OPEN_CHUNKS: usize = 8;

/// The kept streams: input stream index, output stream index, input time base, parameters.
type KeptStream = (usize, usize, Rational, codec::Parameters);

/// Where the chunks start, read from every packet's timestamps before anything is written.
struct CutPlan {
    /// Added to every timestamp (seconds) so that none is negative.
    shift_seconds: f64,
    /// Each chunk's first video packet, counted among the kept video packets in decode order.
    cut_packets: Vec<u64>,
    /// Each chunk's start (its keyframe's presentation time), seconds on the shifted clock.
    starts: Vec<f64>,
    /// The last frame's end, seconds on the shifted clock.
    video_end: f64,
}

fn cut_inner(
    input: &Path,
    dir: &Path,
    target_seconds: f64,
    deadline: Deadline,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<CutChunk>, MediaError> {
    let ictx = open_input(input)?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = video.index();
    let audio = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    let mut streams: Vec<KeptStream> = Vec::new();
    for (out, idx) in std::iter::once(v_index).chain(audio).enumerate() {
        let s = ictx.stream(idx).expect("index from the same context");
        streams.push((idx, out, s.time_base(), s.parameters()));
    }
    drop(ictx);
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
    let plan = plan_cuts(input, &streams, v_index, target_seconds, deadline)?;
    write_chunks(input, dir, &streams, v_index, &plan, deadline, made)
}

/// First pass: every packet's timestamps, nothing written. MPEG-TS has no negative timestamps
/// (B-frames give MP4 sources negative decode times, audio may start before video), so the
/// shift must be known before the first chunk is written; and where audio goes depends on where
/// the chunks start, which the file may store after that audio.
fn plan_cuts(
    input: &Path,
    streams: &[KeptStream],
    v_index: usize,
    target_seconds: f64,
    deadline: Deadline,
) -> Result<CutPlan, MediaError> {
    let mut ictx = open_input(input)?;
    let mut packet = Packet::empty();
    let mut min_seconds = 0.0f64;
    let mut cut_packets = Vec::new();
    let mut starts = Vec::new();
    let mut video_packets = 0u64;
    let mut video_end = f64::MIN;
    while next_packet(&mut ictx, &mut packet)? {
        deadline.check()?;
        let Some(&(_, _, tb, _)) = streams.iter().find(|s| s.0 == packet.stream()) else {
            continue;
        };
        let is_video = packet.stream() == v_index;
        if is_discarded(&packet) {
            if is_video {
                // An edit list hides these frames; MPEG-TS cannot say so.
                return Err(cannot_cut("the video has an edit list that hides frames"));
            }
            continue; // audio priming an edit list hides: dropped
        }
        let seconds = |t: i64| t as f64 * f64::from(tb);
        let (Some(pts), Some(dts)) = (packet.pts(), packet.dts()) else {
            // The MPEG-TS muxer needs both on every packet ("first pts and dts value must be
            // set"); guessing them would re-time the source.
            return Err(cannot_cut(
                "packets without presentation or decode times (MPEG-TS needs both)",
            ));
        };
        min_seconds = min_seconds.min(seconds(dts)).min(seconds(pts));
        if !is_video {
            continue;
        }
        video_end = video_end.max(seconds(pts + packet.duration().max(0)));
        let starts_chunk = packet.is_key()
            && starts
                .last()
                .is_none_or(|&s: &f64| seconds(pts) - s >= target_seconds);
        if starts_chunk {
            cut_packets.push(video_packets);
            starts.push(seconds(pts));
        } else if let Some(&start) = starts.last()
            && starts.len() > 1
            && seconds(pts) < start - 1e-6
        {
            // A frame after a cut shown before the cut's keyframe is an open GOP's leading
            // frame: it needs the previous chunk's frames to decode, so it would be lost.
            return Err(cannot_cut(
                "open GOPs: frames after a keyframe are shown before it",
            ));
        }
        if !starts.is_empty() {
            video_packets += 1;
        }
    }
    if starts.is_empty() {
        return Err(MediaError::CorruptStream("no video keyframe".into()));
    }
    let shift_seconds = -min_seconds;
    Ok(CutPlan {
        shift_seconds,
        cut_packets,
        starts: starts.iter().map(|s| s + shift_seconds).collect(),
        video_end: video_end + shift_seconds,
    })
}

/// Second pass: each packet into its chunk. A chunk is finished once both the video and the
/// audio have moved past it (its muxer interleaves what it holds).
fn write_chunks(
    input: &Path,
    dir: &Path,
    streams: &[KeptStream],
    v_index: usize,
    plan: &CutPlan,
    deadline: Deadline,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<CutChunk>, MediaError> {
    let has_audio = streams.len() > 1;
    let end_of = |i: usize| plan.starts.get(i + 1).copied().unwrap_or(plan.video_end);
    let mut open: std::collections::BTreeMap<usize, ChunkWriter> = Default::default();
    let mut chunks = Vec::new();
    let mut ictx = open_input(input)?;
    let mut packet = Packet::empty();
    // Kept video packets seen (before the first keyframe, none are kept), and the chunk the
    // last video and audio packet went into.
    let mut video_packets = 0u64;
    let mut seen_video = false;
    let (mut video_at, mut audio_at) = (0usize, 0usize);
    while next_packet(&mut ictx, &mut packet)? {
        deadline.check()?;
        let Some(&(_, out, in_tb, _)) = streams.iter().find(|s| s.0 == packet.stream()) else {
            continue;
        };
        if is_discarded(&packet) {
            continue; // audio priming (hidden video was refused in the first pass)
        }
        let is_video = packet.stream() == v_index;
        let shifted = packet.pts().unwrap_or(0) as f64 * f64::from(in_tb) + plan.shift_seconds;
        let chunk = if is_video {
            if packet.is_key() && plan.cut_packets.first() == Some(&video_packets) {
                seen_video = true;
            }
            if !seen_video {
                continue; // frames before the first keyframe cannot be decoded
            }
            let c = plan.cut_packets.partition_point(|&p| p <= video_packets) - 1;
            video_packets += 1;
            video_at = c;
            c
        } else {
            let c = plan
                .starts
                .partition_point(|&s| s <= shifted + 1e-9)
                .saturating_sub(1);
            audio_at = audio_at.max(c);
            c
        };
        let w = match open.entry(chunk) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                if chunk > video_at + MAX_OPEN_CHUNKS {
                    return Err(cannot_cut("audio is stored far ahead of its video"));
                }
                if chunks.len() > chunk {
                    // Audio stored more than MAX_OPEN_CHUNKS chunks behind its video.
                    return Err(cannot_cut("audio is stored far behind its video"));
                }
                let path = dir.join(format!("chunk-{chunk:05}.ts"));
                made.push(path.clone());
                e.insert(open_chunk(
                    &path,
                    chunk as u32,
                    plan.starts[chunk],
                    streams,
                )?)
            }
        };
        let shift = (plan.shift_seconds / f64::from(in_tb)).ceil() as i64;
        packet.set_pts(packet.pts().map(|t| t + shift));
        packet.set_dts(packet.dts().map(|t| t + shift));
        packet.set_stream(out);
        packet.set_position(-1);
        let ost_tb = w.octx.stream(out).expect("stream added").time_base();
        packet.rescale_ts(in_tb, ost_tb);
        packet
            .write_interleaved(&mut w.octx)
            .map_err(|e| cannot_cut(format!("the MPEG-TS muxer refused a packet: {e}")))?;
        // Finish, in order, the chunks both streams have left behind (or that audio lags far
        // behind, as when it ends early: then no more of it comes for them).
        let done_below = if has_audio {
            video_at
                .min(audio_at)
                .max(video_at.saturating_sub(MAX_OPEN_CHUNKS))
        } else {
            video_at
        };
        while chunks.len() < done_below {
            let i = chunks.len();
            let w = open
                .remove(&i)
                .ok_or_else(|| cannot_cut("a chunk holds no video"))?;
            chunks.push(finish(w, end_of(i))?);
        }
    }
    while chunks.len() < plan.starts.len() {
        let i = chunks.len();
        let w = open
            .remove(&i)
            .ok_or_else(|| cannot_cut("a chunk holds no video"))?;
        chunks.push(finish(w, end_of(i))?);
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
    // The muxer's refusals (header or trailer) mean this file cannot be chunked: it goes whole.
    let refused = |e: ffmpeg_next::Error| cannot_cut(format!("the MPEG-TS muxer refused it: {e}"));
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
    octx.write_header_with(opts).map_err(refused)?;
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
        .map_err(|e| cannot_cut(format!("the MPEG-TS muxer refused it: {e}")))?;
    let bytes = std::fs::metadata(&w.path)?.len();
    Ok(CutChunk {
        index: w.index,
        path: w.path,
        start_seconds: w.start_seconds,
        end_seconds,
        bytes,
    })
}
