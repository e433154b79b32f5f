//! Probe: what a file holds, read from its header and its packets without decoding.

use std::path::Path;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::packet::Ref as _;
use ffmpeg_next::{Packet, Rational, codec, format, media};
use serde::{Deserialize, Serialize};

use crate::{Deadline, Limits, MediaError};

use crate::input::ACCEPTED_VIDEO_CODECS;
pub(crate) use crate::input::{SizeWatch, limit_decoder, open_input};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// Demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    pub container: String,
    pub size_bytes: u64,
    pub duration_seconds: f64,
    pub video: VideoInfo,
    pub audio: Option<AudioInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VideoInfo {
    pub stream_index: usize,
    pub codec: String,
    pub pixel_format: String,
    /// Coded size, before rotation.
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation (0, 90, 180, 270) to apply for display.
    pub rotation: u32,
    /// Size as displayed: pixel aspect ratio and rotation applied.
    pub display_width: u32,
    pub display_height: u32,
    /// Time base of the stream's timestamps, as (numerator, denominator).
    pub time_base: (i32, i32),
    /// Presentation span in the stream's time base: first shown frame's start, last frame's end.
    /// Decoding may have to start earlier, at the keyframe before `start_pts`.
    pub start_pts: i64,
    pub end_pts: i64,
    /// Frame durations differ (beyond one tick of rounding).
    pub variable_frame_rate: bool,
    /// Some frames are stored out of presentation order (B-frames).
    pub reordered: bool,
    /// Average frame rate (frames per second).
    pub frame_rate: f64,
    /// The same, exact, as (numerator, denominator).
    pub frame_rate_q: (i32, i32),
    /// Frames counted from packets: exact for every codec vtx accepts (one frame per packet).
    pub frames: u64,
    /// Average bits per second of the shown frames' packets.
    #[serde(default)]
    pub bitrate: u64,
    /// From the first frame's start to the last frame's end.
    pub duration_seconds: f64,
    /// The GOP index: every keyframe, in decode order, read from packets without decoding
    /// (including one hidden by an edit list, where decoding of the first frames starts).
    pub keyframes: Vec<Keyframe>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyframe {
    pub pts: i64,
    pub dts: i64,
    /// Byte offset in the file, when the container knows it.
    pub pos: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AudioInfo {
    pub stream_index: usize,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// FFmpeg's name of the channel layout, e.g. "stereo".
    pub layout: String,
    /// First audible sample (priming an edit list hides excluded), seconds on the file's clock;
    /// `None` when the stream holds no packets.
    #[serde(default)]
    pub start_seconds: Option<f64>,
    pub duration_seconds: f64,
}

/// Opens `path`, checks it against `limits` and scans every packet. Fails with a typed error
/// for anything that is not a readable video within limits.
pub fn probe(path: &Path, limits: &Limits, deadline: Deadline) -> Result<Probe, MediaError> {
    crate::init();
    let size_bytes = std::fs::metadata(path)?.len();
    if size_bytes > limits.max_file_bytes {
        return Err(MediaError::TooLarge(format!(
            "{size_bytes} bytes, over the limit of {}",
            limits.max_file_bytes
        )));
    }
    let mut ictx = open_input(path)?;
    let container = ictx.format().name().to_string();

    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = vstream.index();
    let v_tb = vstream.time_base();
    // Frames the container's index lists (0 where it keeps none, as MPEG-TS).
    let declared_frames = u64::try_from(vstream.frames()).unwrap_or(0);
    let v_params = vstream.parameters();
    let v_codec_id = v_params.id();
    if !ACCEPTED_VIDEO_CODECS.contains(&v_codec_id) || codec::decoder::find(v_codec_id).is_none() {
        return Err(MediaError::UnsupportedCodec(format!("{v_codec_id:?}")));
    }
    let mut sizes = SizeWatch::new(v_params.clone());
    let v_ctx = codec::context::Context::from_parameters(v_params)
        .map_err(MediaError::ffmpeg("reading video parameters"))?;
    let v_dec = v_ctx
        .decoder()
        .video()
        .map_err(|_| MediaError::UnsupportedCodec(format!("{v_codec_id:?}")))?;
    let (width, height) = (v_dec.width(), v_dec.height());
    let pixel_format = format!("{:?}", v_dec.format()).to_lowercase();
    // Non-square pixels (anamorphic video) widen or narrow the picture on screen.
    let sar = v_dec.aspect_ratio();
    let shown_width = match rational_to_f64(sar) {
        Some(r) if (r - 1.0).abs() > 1e-3 && (0.1..=10.0).contains(&r) => {
            ((f64::from(width) * r / 2.0).round() as u32 * 2).max(2)
        }
        _ => width,
    };
    let rotation = display_rotation(&vstream);
    if width == 0 || height == 0 {
        return Err(MediaError::CorruptStream(
            "video stream has no dimensions".into(),
        ));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(MediaError::TooLarge(format!(
            "{width}x{height} frames, over the limit of {} pixels",
            limits.max_pixels
        )));
    }
    let frame_rate_q = nominal_frame_rate(vstream.avg_frame_rate(), vstream.rate());
    let frame_rate = rational_to_f64(frame_rate_q).unwrap_or(25.0);

    let audio = ictx.streams().best(media::Type::Audio).map(|s| {
        let p = s.parameters();
        let (sample_rate, channels, layout) = codec::context::Context::from_parameters(p.clone())
            .ok()
            .and_then(|c| c.decoder().audio().ok())
            .map(|a| {
                let channels = a.channels();
                let layout = match a.channel_layout().bits() {
                    0 => ffmpeg_next::ChannelLayout::default(i32::from(channels)),
                    _ => a.channel_layout(),
                };
                (a.rate(), channels, layout_name(layout, channels))
            })
            .unwrap_or((0, 0, String::new()));
        AudioInfo {
            stream_index: s.index(),
            codec: format!("{:?}", p.id()).to_lowercase(),
            sample_rate,
            channels,
            layout,
            start_seconds: None,
            duration_seconds: 0.0,
        }
    });
    let a_index = audio.as_ref().map(|a| a.stream_index);
    let a_tb = a_index.and_then(|i| ictx.stream(i)).map(|s| s.time_base());

    // Cheap early refusal when the header declares an over-long file.
    let header_seconds = ictx.duration() as f64 / f64::from(ffmpeg_next::ffi::AV_TIME_BASE);
    check_duration(header_seconds, limits)?;

    let nominal_frame = if frame_rate > 0.0 {
        (f64::from(v_tb.denominator()) / (frame_rate * f64::from(v_tb.numerator()))).round() as i64
    } else {
        0
    };
    let mut video_span = Span::new(nominal_frame);
    let mut audio_span = Span::new(0);
    let mut frames = 0u64;
    let mut video_bytes = 0u64;
    let mut hidden = 0u64;
    let mut keyframes = Vec::new();
    let mut pts_list = Vec::new();
    let mut reordered = false;
    let mut packet = Packet::empty();
    loop {
        deadline.check()?;
        if !next_packet(&mut ictx, &mut packet)? {
            break;
        }
        let idx = packet.stream();
        if idx == v_index {
            // Every packet, shown or not, is decoded: its size is checked from its headers.
            if let Some((w, h)) = sizes.as_mut().and_then(|s| s.size(&packet))
                && u64::from(w) * u64::from(h) > limits.max_pixels
            {
                return Err(MediaError::TooLarge(format!(
                    "a {w}x{h} frame after {frames} frames, over the limit of {} pixels",
                    limits.max_pixels
                )));
            }
            // An edit list hides these (decoded as references, never shown): keyframes count for
            // where decoding may start, but the frame is not part of the video.
            if is_discarded(&packet) {
                hidden += 1;
                if packet.is_key()
                    && let Some(pts) = packet.pts().or(packet.dts())
                {
                    keyframes.push(Keyframe {
                        pts,
                        dts: packet.dts().unwrap_or(pts),
                        pos: u64::try_from(packet.position()).ok(),
                    });
                }
                continue;
            }
            frames += 1;
            video_bytes += packet.size() as u64;
            if let (Some(pts), Some(dts)) = (packet.pts(), packet.dts()) {
                reordered |= pts != dts && !pts_list.is_empty();
            }
            if let Some(pts) = packet.pts().or(packet.dts()) {
                pts_list.push(pts);
                if packet.is_key() {
                    keyframes.push(Keyframe {
                        pts,
                        dts: packet.dts().unwrap_or(pts),
                        pos: u64::try_from(packet.position()).ok(),
                    });
                }
            }
            video_span.add(&packet);
            if frames > limits.max_frames {
                return Err(MediaError::TooLarge(format!(
                    "over {} frames",
                    limits.max_frames
                )));
            }
        } else if Some(idx) == a_index && !is_discarded(&packet) {
            // Priming samples an edit list hides are not part of the audio.
            audio_span.add(&packet);
        }
    }
    if frames == 0 {
        return Err(MediaError::CorruptStream(
            "video stream holds no frames".into(),
        ));
    }
    // An index that lists frames the file no longer holds: the file was cut off (a damaged
    // packet is concealed; a missing end is not damage but a different, shorter video).
    if declared_frames > 0 && frames + hidden < declared_frames {
        return Err(MediaError::CorruptStream(format!(
            "the file ends early: {} of the {declared_frames} frames its index lists are there",
            frames + hidden
        )));
    }
    if keyframes.is_empty() {
        return Err(MediaError::CorruptStream(
            "video stream holds no keyframe".into(),
        ));
    }
    let video_seconds = video_span.seconds(v_tb);
    let variable_frame_rate = is_variable_rate(&mut pts_list);
    check_duration(video_seconds, limits)?;
    let audio = audio.map(|mut a| {
        if let Some(tb) = a_tb {
            a.duration_seconds = audio_span.seconds(tb);
            a.start_seconds = audio_span.start.map(|s| s as f64 * f64::from(tb));
        }
        a
    });

    Ok(Probe {
        container,
        size_bytes,
        duration_seconds: video_seconds.max(header_seconds.max(0.0)),
        video: VideoInfo {
            stream_index: v_index,
            codec: format!("{v_codec_id:?}").to_lowercase(),
            pixel_format,
            width,
            height,
            rotation,
            display_width: if rotation % 180 == 90 {
                height
            } else {
                shown_width
            },
            display_height: if rotation % 180 == 90 {
                shown_width
            } else {
                height
            },
            time_base: (v_tb.numerator(), v_tb.denominator()),
            start_pts: video_span.start.unwrap_or(0),
            end_pts: video_span.end.unwrap_or(0),
            variable_frame_rate,
            reordered,
            frame_rate,
            frame_rate_q: (frame_rate_q.numerator(), frame_rate_q.denominator()),
            frames,
            duration_seconds: video_seconds,
            bitrate: if video_seconds > 0.0 {
                (video_bytes as f64 * 8.0 / video_seconds) as u64
            } else {
                0
            },
            keyframes,
        },
        audio,
    })
}

/// Reads the next packet; `Ok(false)` at the end of the file. FFmpeg's packet iterator stops
/// silently on any error; this surfaces errors as a corrupt stream.
///
/// The packet's previous data is released first: `av_read_frame` (behind ffmpeg-next's
/// `Packet::read`) overwrites a packet without unreferencing it, so reusing one packet leaked
/// every packet read (the whole file, per probe or transcode).
pub(crate) fn next_packet(
    ictx: &mut format::context::Input,
    packet: &mut Packet,
) -> Result<bool, MediaError> {
    unsafe { ffmpeg_next::ffi::av_packet_unref(packet.as_mut_ptr()) };
    match packet.read(ictx) {
        Ok(()) => Ok(true),
        Err(ffmpeg_next::Error::Eof) => Ok(false),
        Err(e) => Err(MediaError::CorruptStream(format!("reading packets: {e}"))),
    }
}

/// Whether the demuxer marked a packet as decoded-but-not-shown (edit lists).
pub(crate) fn is_discarded(p: &Packet) -> bool {
    unsafe { (*p.as_ptr()).flags & ffmpeg_next::ffi::AV_PKT_FLAG_DISCARD != 0 }
}

/// Clockwise degrees to rotate for display, from the stream's display matrix.
pub(crate) fn display_rotation(stream: &format::stream::Stream) -> u32 {
    // Read through FFmpeg directly: ffmpeg-next's side-data iterator panics on types it does not
    // know, and this runs on untrusted input.
    let angle = unsafe {
        let mut size = 0usize;
        let data = ffmpeg_next::ffi::av_stream_get_side_data(
            stream.as_ptr(),
            ffmpeg_next::ffi::AVPacketSideDataType::AV_PKT_DATA_DISPLAYMATRIX,
            &mut size,
        );
        if data.is_null() || size < 9 * 4 {
            return 0;
        }
        ffmpeg_next::ffi::av_display_rotation_get(data as *const i32)
    };
    if !angle.is_finite() {
        return 0;
    }
    // The matrix gives counter-clockwise degrees; snap to a quarter turn.
    let clockwise = (-angle).rem_euclid(360.0);
    ((clockwise / 90.0).round() as u32 % 4) * 90
}

/// Whether frame durations vary, from sorted presentation times.
fn is_variable_rate(pts: &mut [i64]) -> bool {
    pts.sort_unstable();
    let deltas: Vec<i64> = pts.windows(2).map(|w| w[1] - w[0]).collect();
    let (Some(min), Some(max)) = (deltas.iter().min(), deltas.iter().max()) else {
        return false;
    };
    // One tick of slack for rounding, e.g. 29.97 fps in a 1/1000 time base.
    max - min > 1 + max / 100
}

fn layout_name(layout: ffmpeg_next::ChannelLayout, channels: u16) -> String {
    let mut buf = [0u8; 64];
    let n = unsafe {
        ffmpeg_next::ffi::av_get_channel_layout_string(
            buf.as_mut_ptr() as *mut std::ffi::c_char,
            buf.len() as i32,
            i32::from(channels),
            layout.bits(),
        );
        buf.iter().position(|&b| b == 0).unwrap_or(0)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn check_duration(seconds: f64, limits: &Limits) -> Result<(), MediaError> {
    if seconds.is_finite() && seconds > limits.max_duration.as_secs_f64() {
        return Err(MediaError::TooLong {
            seconds,
            limit: limits.max_duration.as_secs(),
        });
    }
    Ok(())
}

/// The frame rate to encode at: the stream's base rate when the average agrees with it within
/// 1% (a looped or trimmed file averages 24.96 for a 25 fps stream), else the average.
pub(crate) fn nominal_frame_rate(avg: Rational, base: Rational) -> Rational {
    let ok = |r: Rational| rational_to_f64(r).filter(|f| (1.0..=240.0).contains(f));
    match (ok(avg), ok(base)) {
        (Some(a), Some(b)) if (a - b).abs() <= 0.01 * b => base,
        (Some(_), _) => avg,
        (None, Some(_)) => base,
        (None, None) => Rational(25, 1),
    }
}

pub(crate) fn rational_to_f64(r: Rational) -> Option<f64> {
    (r.numerator() > 0 && r.denominator() > 0)
        .then(|| f64::from(r.numerator()) / f64::from(r.denominator()))
}

/// The presentation span of a stream's packets: first start to last end.
struct Span {
    start: Option<i64>,
    end: Option<i64>,
    /// Used for packets that carry no duration of their own.
    default_duration: i64,
}

impl Span {
    fn new(default_duration: i64) -> Self {
        Self {
            start: None,
            end: None,
            default_duration,
        }
    }

    fn add(&mut self, p: &Packet) {
        let Some(pts) = p.pts().or(p.dts()) else {
            return;
        };
        let d = if p.duration() > 0 {
            p.duration()
        } else {
            self.default_duration
        };
        let end = pts + d;
        self.start = Some(self.start.map_or(pts, |s| s.min(pts)));
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
    }

    fn seconds(&self, tb: Rational) -> f64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) => {
                (e - s) as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator())
            }
            _ => 0.0,
        }
    }
}
