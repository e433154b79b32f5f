//! Probe: what a file holds, read from its header and its packets without decoding.

use std::path::Path;

use ffmpeg_next::{Packet, Rational, codec, format, media};
use serde::{Deserialize, Serialize};

use crate::{Deadline, Limits, MediaError};

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
    pub width: u32,
    pub height: u32,
    /// Average frame rate (frames per second).
    pub frame_rate: f64,
    /// Frames counted from packets: exact for every codec vtx accepts (one frame per packet).
    pub frames: u64,
    pub keyframes: u64,
    /// From the first frame's start to the last frame's end.
    pub duration_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AudioInfo {
    pub stream_index: usize,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub duration_seconds: f64,
}

/// Containers vtx accepts. FFmpeg alone would open far more (a text file through its `tty`
/// demuxer, a still through `image2`), and every demuxer is attack surface for untrusted input.
pub const ACCEPTED_CONTAINERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi,flv,mpeg";

/// Video codecs vtx decodes; anything else is `unsupported-codec`.
const ACCEPTED_VIDEO_CODECS: [codec::Id; 10] = [
    codec::Id::H264,
    codec::Id::HEVC,
    codec::Id::VP8,
    codec::Id::VP9,
    codec::Id::AV1,
    codec::Id::MPEG4,
    codec::Id::MPEG2VIDEO,
    codec::Id::MPEG1VIDEO,
    codec::Id::H263,
    codec::Id::PRORES,
];

/// Opens untrusted input with only the accepted demuxers enabled.
pub(crate) fn open_input(path: &Path) -> Result<format::context::Input, MediaError> {
    let mut opts = ffmpeg_next::Dictionary::new();
    opts.set("format_whitelist", ACCEPTED_CONTAINERS);
    format::input_with_dictionary(path, opts).map_err(|_| MediaError::NotAVideo)
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
    let v_params = vstream.parameters();
    let v_codec_id = v_params.id();
    if !ACCEPTED_VIDEO_CODECS.contains(&v_codec_id) || codec::decoder::find(v_codec_id).is_none() {
        return Err(MediaError::UnsupportedCodec(format!("{v_codec_id:?}")));
    }
    let v_ctx = codec::context::Context::from_parameters(v_params)
        .map_err(MediaError::ffmpeg("reading video parameters"))?;
    let v_dec = v_ctx
        .decoder()
        .video()
        .map_err(|_| MediaError::UnsupportedCodec(format!("{v_codec_id:?}")))?;
    let (width, height) = (v_dec.width(), v_dec.height());
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
    let frame_rate = rational_to_f64(vstream.avg_frame_rate())
        .or_else(|| rational_to_f64(vstream.rate()))
        .unwrap_or(0.0);

    let audio = ictx.streams().best(media::Type::Audio).map(|s| {
        let p = s.parameters();
        let (sample_rate, channels) = codec::context::Context::from_parameters(p.clone())
            .ok()
            .and_then(|c| c.decoder().audio().ok())
            .map(|a| (a.rate(), a.channel_layout().channels() as u16))
            .unwrap_or((0, 0));
        AudioInfo {
            stream_index: s.index(),
            codec: format!("{:?}", p.id()).to_lowercase(),
            sample_rate,
            channels,
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
    let (mut frames, mut keyframes) = (0u64, 0u64);
    let mut packet = Packet::empty();
    loop {
        deadline.check()?;
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => break,
            Err(e) => return Err(MediaError::CorruptStream(format!("reading packets: {e}"))),
        }
        let idx = packet.stream();
        if idx == v_index {
            frames += 1;
            if packet.is_key() {
                keyframes += 1;
            }
            video_span.add(&packet);
            if frames > limits.max_frames {
                return Err(MediaError::TooLarge(format!(
                    "over {} frames",
                    limits.max_frames
                )));
            }
        } else if Some(idx) == a_index {
            audio_span.add(&packet);
        }
    }
    if frames == 0 {
        return Err(MediaError::CorruptStream(
            "video stream holds no frames".into(),
        ));
    }
    let video_seconds = video_span.seconds(v_tb);
    check_duration(video_seconds, limits)?;
    let audio = audio.map(|mut a| {
        a.duration_seconds = a_tb.map(|tb| audio_span.seconds(tb)).unwrap_or(0.0);
        a
    });

    Ok(Probe {
        container,
        size_bytes,
        duration_seconds: video_seconds.max(header_seconds.max(0.0)),
        video: VideoInfo {
            stream_index: v_index,
            codec: format!("{v_codec_id:?}").to_lowercase(),
            width,
            height,
            frame_rate,
            frames,
            keyframes,
            duration_seconds: video_seconds,
        },
        audio,
    })
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
