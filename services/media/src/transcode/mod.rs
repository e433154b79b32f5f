//! Ladder transcode: the input is decoded once; each decoded frame passes one shared post-decode
//! graph (rotation, watermark) and then every rung's own scaler and encoder. Audio, when asked
//! for, is decoded and encoded to AAC once and the same packets go into every output.
//!
//! The same code encodes a whole source (`window: None`) or one slice of it (the frames whose
//! presentation time falls inside the window), so a sliced encode and a monolithic one share
//! every setting.

use std::path::PathBuf;
use std::sync::Arc;

use ffmpeg_next::{Packet, Rational, Rescale, codec, frame, media, picture, threading};
use serde::{Deserialize, Serialize};
use vtx_domain::Rung;

use crate::audio::AudioPipe;
use crate::cascade::{cascade_parents, feeding_order};
use crate::conceal::{Concealed, DamageCount, DamagePolicy, VideoConcealer, is_concealed};
use crate::encoder::{Tier, VideoCodec};
use crate::probe::{is_discarded, next_packet, nominal_frame_rate, open_input, rational_to_f64};
use crate::{Deadline, MediaError};

mod clock;
mod encoders;
mod graph;
mod rung;

use clock::*;
use encoders::*;
pub use encoders::{can_encode_tier, detect_h264_encoders};
pub(crate) use graph::PostDecode;
use rung::*;
#[derive(Clone, Debug)]
pub struct RenditionOutput {
    pub rung: Rung,
    pub codec: VideoCodec,
    pub path: PathBuf,
    /// Constant-quality value for this output (chosen per title, see `per_title`); `None`: the
    /// request's `crf`, else the tier's.
    pub crf: Option<f32>,
}

/// A presentation-time window `[start, end)` in `time_base` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
    pub time_base: (i32, i32),
}

impl Window {
    /// Every frame of the video `v` describes.
    pub fn whole(v: &crate::probe::VideoInfo) -> Self {
        Self {
            start: v.start_pts,
            end: v.end_pts + 1,
            time_base: v.time_base,
        }
    }
}

/// Frames encoded so far, for progress reports.
pub type FrameProgress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct TranscodeRequest {
    pub input: PathBuf,
    /// Only frames presented inside the window are encoded, with timestamps counted from its
    /// start. `None`: every frame, counted from the first.
    pub window: Option<Window>,
    /// Where the window starts on the whole video's timeline (window time base), so keyframes
    /// fall on one grid across slices.
    pub timeline_offset: i64,
    pub outputs: Vec<RenditionOutput>,
    pub tier: Tier,
    /// Keyframe interval; the same on every rung and slice so that renditions stay switchable.
    pub gop_seconds: f64,
    /// The source's frame rate; `None` reads it from the input.
    pub frame_rate: Option<(i32, i32)>,
    /// Clockwise quarter turns to apply, in degrees (slices carry no display matrix).
    pub rotation: u32,
    pub watermark: Option<PathBuf>,
    /// Mux the input's audio (as AAC) into every output.
    pub audio: bool,
    /// Encoder and decoder threads; `None` lets FFmpeg choose.
    pub threads: Option<usize>,
    /// H.264 encoder to use instead of libx264 (a GPU one, say); libx264 if it fails to open.
    pub h264_encoder: Option<String>,
    /// Constant-quality value instead of the tier's (software encoders; benchmarks sweep it).
    pub crf: Option<u32>,
    /// x264's and x265's psychovisual rate-distortion in the high and extreme tiers (the fast
    /// tier keeps x264's defaults, under which it barely acts).
    pub psychovisual: bool,
    /// How much damage is concealed before the input is refused as corrupt.
    pub damage: DamagePolicy,
    pub deadline: Deadline,
    pub progress: Option<FrameProgress>,
}

impl std::fmt::Debug for TranscodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscodeRequest")
            .field("input", &self.input)
            .field("window", &self.window)
            .field("outputs", &self.outputs)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

impl TranscodeRequest {
    /// A whole-file request with the usual settings.
    pub fn new(input: impl Into<PathBuf>, outputs: Vec<RenditionOutput>, tier: Tier) -> Self {
        Self {
            input: input.into(),
            window: None,
            timeline_offset: 0,
            outputs,
            tier,
            gop_seconds: 2.0,
            frame_rate: None,
            rotation: 0,
            watermark: None,
            audio: true,
            threads: None,
            h264_encoder: None,
            crf: None,
            psychovisual: false,
            damage: DamagePolicy::default(),
            deadline: Deadline::none(),
            progress: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenditionReport {
    pub name: String,
    pub codec: VideoCodec,
    /// RFC 6381, e.g. "avc1.64001F".
    pub codec_string: String,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_seconds: f64,
    pub bytes: u64,
    /// Whole-file bitrate, bits per second.
    pub bitrate: u64,
    pub has_audio: bool,
    /// Frames of the input that could not be decoded and were concealed (the same for every
    /// rendition of one transcode).
    #[serde(default)]
    pub concealed: Concealed,
}

/// Held by a transcode with AV1 outputs (see `transcode_ladder`).
static AV1_TRANSCODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the ladder transcode. On any error every output file is removed, so a failure never
/// leaves a half-written rendition behind.
pub fn transcode_ladder(req: &TranscodeRequest) -> Result<Vec<RenditionReport>, MediaError> {
    crate::init();
    // SVT-AV1 1.4.1 crashes a process where one AV1 encoder closes while another is still
    // encoding (seen as a SIGSEGV once per-title searches made short AV1 encodes frequent; see
    // `OpenEncoder` for the table it shares): transcodes with AV1 outputs run one at a time per
    // process. One transcode may hold several AV1 encoders (one per rung).
    let _av1 = req
        .outputs
        .iter()
        .any(|o| o.codec == VideoCodec::Av1)
        .then(|| {
            AV1_TRANSCODES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
    let result = run(req);
    if result.is_err() {
        for o in &req.outputs {
            let _ = std::fs::remove_file(&o.path);
        }
    }
    result
}

fn run(req: &TranscodeRequest) -> Result<Vec<RenditionReport>, MediaError> {
    let mut ictx = open_input(&req.input)?;
    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = vstream.index();
    let in_tb = vstream.time_base();
    let frame_rate = req
        .frame_rate
        .map(|(n, d)| Rational(n, d))
        .filter(|r| rational_to_f64(*r).is_some_and(|f| (1.0..=240.0).contains(&f)))
        .unwrap_or_else(|| nominal_frame_rate(vstream.avg_frame_rate(), vstream.rate()));
    let mut vctx = codec::context::Context::from_parameters(vstream.parameters())
        .map_err(MediaError::ffmpeg("reading video parameters"))?;
    crate::probe::limit_decoder(&mut vctx);
    vctx.set_threading(threading::Config {
        kind: threading::Type::Frame,
        count: req.threads.unwrap_or(0),
        ..Default::default()
    });
    let mut vdec = vctx.decoder();
    vdec.set_packet_time_base(in_tb);
    let mut vdec = vdec
        .video()
        .map_err(|e| MediaError::UnsupportedCodec(format!("video decoder: {e}")))?;

    // Timestamps: output time 0 is the window's start (or the first frame).
    let window = req.window.map(|w| {
        let tb = Rational(w.time_base.0, w.time_base.1);
        (w.start.rescale(tb, in_tb), w.end.rescale(tb, in_tb))
    });
    // Every frame keeps its source time, on the source's own clock: nothing is re-timed to a
    // nominal rate (a variable-rate phone recording stays in sync with its audio).
    let enc_tb = req
        .window
        .map(|w| Rational(w.time_base.0, w.time_base.1))
        .unwrap_or(in_tb);

    let mut audio = match (req.audio, ictx.streams().best(media::Type::Audio)) {
        (true, Some(s)) => {
            // Audio shares the video's zero: the window's start, or the video stream's start.
            let zero = window
                .map(|w| w.0)
                .unwrap_or_else(|| vstream.start_time().max(0));
            let end = window.map(|w| w.1.rescale(in_tb, s.time_base()));
            Some(AudioPipe::new(
                &s,
                zero.rescale(in_tb, s.time_base()),
                end,
                req.damage,
            )?)
        }
        _ => None,
    };

    let mut post = PostDecode::new(&vdec, in_tb, req.rotation, req.watermark.as_deref())?;
    let gop = (req.gop_seconds * rational_to_f64(frame_rate).unwrap_or(25.0))
        .round()
        .max(1.0) as u32;
    let outs = req
        .outputs
        .iter()
        .map(|o| {
            VideoOut::new(
                o,
                req,
                frame_rate,
                enc_tb,
                gop,
                audio.as_ref().map(|a| a.encoder()),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut outs = Rungs::new(outs);

    let offset_tb = req
        .window
        .map(|w| Rational(w.time_base.0, w.time_base.1))
        .unwrap_or(in_tb);
    let mut clock = Clock {
        window,
        base: window.map(|w| w.0),
        in_tb,
        enc_tb,
        offset: req.timeline_offset.rescale(offset_tb, enc_tb),
        gop_ticks: ((req.gop_seconds * f64::from(enc_tb.denominator())
            / f64::from(enc_tb.numerator()))
        .round() as i64)
            .max(1),
        last_gop: None,
        encoded: 0,
        progress: req.progress.clone(),
        damage: DamageCount::default(),
        frame_seconds: 1.0 / rational_to_f64(frame_rate).unwrap_or(25.0),
    };
    let mut packet = Packet::empty();
    let mut concealer = VideoConcealer::default();
    loop {
        req.deadline.check()?;
        if !next_packet(&mut ictx, &mut packet)? {
            break;
        }
        if packet.stream() == v_index {
            if !is_discarded(&packet) {
                concealer.sent(packet.pts());
            }
            // A packet the decoder refuses is lost, and concealed like any frame that never
            // comes out (the `ffmpeg` command line goes on too).
            if let Err(e) = vdec.send_packet(&packet) {
                tracing::debug!(error = %e, "undecodable video packet");
            }
            drain_decoder(&mut vdec, &mut concealer, &mut post, &mut clock, &mut outs)?;
        } else if let Some(a) = audio
            .as_mut()
            .filter(|a| a.stream_index() == packet.stream())
        {
            a.push_packet(&packet, &mut |p, tb| write_audio_all(&mut outs, p, tb))?;
        }
    }
    vdec.send_eof()
        .map_err(MediaError::ffmpeg("flushing the video decoder"))?;
    drain_decoder(&mut vdec, &mut concealer, &mut post, &mut clock, &mut outs)?;
    for mut f in concealer.finish()? {
        show(&mut f, &mut post, &mut clock, &mut outs)?;
    }
    if let Some(p) = post.as_mut() {
        p.flush()?;
        p.drain(&mut clock, &mut outs)?;
    }
    let (n, seconds) = clock.damage.longest;
    req.damage
        .check_run("video", n, seconds)
        .map_err(MediaError::CorruptStream)?;
    let mut concealed = Concealed {
        video_frames: clock.damage.frames,
        audio_frames: 0,
    };
    if let Some(a) = audio.as_mut() {
        a.finish(&mut |p, tb| write_audio_all(&mut outs, p, tb))?;
        concealed.audio_frames = a.concealed()?;
    }
    let has_audio = audio.is_some();
    outs.outs
        .into_iter()
        .map(|o| o.finish(has_audio, concealed))
        .collect()
}

fn write_audio_all(outs: &mut Rungs, pkt: &Packet, tb: Rational) -> Result<(), MediaError> {
    for out in outs.outs.iter_mut() {
        out.write_audio(pkt, tb)?;
    }
    Ok(())
}

/// The ladder's rungs, each fed the decoded frame or a larger rung's scaled one (`cascade`).
///
/// They run one after another on the decoding thread; the encoders have threads of their own.
/// (A thread per rung was tried and dropped: no faster on 2 cores, and its short-lived threads
/// took malloc arenas shared with the idle-class threads of extreme encodes, which then held
/// the fast tier up by 10 to 40% in `vtx bench extreme --priority-only`.)
struct Rungs {
    outs: Vec<VideoOut>,
    parents: Vec<Option<usize>>,
    order: Vec<usize>,
}

impl Rungs {
    fn new(outs: Vec<VideoOut>) -> Self {
        let sizes: Vec<_> = outs.iter().map(|o| (o.width, o.height)).collect();
        let parents = cascade_parents(&sizes);
        let order = feeding_order(&parents);
        Self {
            outs,
            parents,
            order,
        }
    }

    fn push(&mut self, f: &frame::Video, pts: i64) -> Result<(), MediaError> {
        let mut scaled: Vec<Option<frame::Video>> = self.outs.iter().map(|_| None).collect();
        for &i in &self.order {
            let input = match self.parents[i] {
                None => f,
                Some(p) => scaled[p].as_ref().expect("parents are fed first"),
            };
            scaled[i] = Some(self.outs[i].push_frame(input, pts)?);
        }
        Ok(())
    }
}

fn drain_decoder(
    dec: &mut ffmpeg_next::decoder::Video,
    concealer: &mut VideoConcealer,
    post: &mut Option<PostDecode>,
    clock: &mut Clock,
    outs: &mut Rungs,
) -> Result<(), MediaError> {
    let mut decoded = frame::Video::empty();
    let mut errors = 0;
    loop {
        match dec.receive_frame(&mut decoded) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => return Ok(()),
            Err(ffmpeg_next::Error::Other { errno })
                if errno == ffmpeg_next::util::error::EAGAIN =>
            {
                return Ok(());
            }
            // A frame that failed to decode: it is concealed once the next one comes out.
            // Frames queued behind it are still read (a bounded number of errors in a row).
            Err(e) => {
                tracing::debug!(error = %e, "undecodable video frame");
                errors += 1;
                if errors > crate::conceal::MAX_ERRORS_IN_A_ROW {
                    return Ok(());
                }
                continue;
            }
        }
        errors = 0;
        let ts = decoded.timestamp();
        decoded.set_pts(ts);
        for mut lost in concealer.decoded(&mut decoded)? {
            show(&mut lost, post, clock, outs)?;
        }
        show(&mut decoded, post, clock, outs)?;
    }
}

/// One decoded (or concealing) frame into the post-decode graph or straight to the rungs.
fn show(
    f: &mut frame::Video,
    post: &mut Option<PostDecode>,
    clock: &mut Clock,
    outs: &mut Rungs,
) -> Result<(), MediaError> {
    match post.as_mut() {
        Some(p) => {
            p.push(f)?;
            p.drain(clock, outs)
        }
        None => encode_frame(f, clock, outs),
    }
}

fn encode_frame(
    f: &mut frame::Video,
    clock: &mut Clock,
    outs: &mut Rungs,
) -> Result<(), MediaError> {
    let Some((pts, key)) = f.pts().and_then(|p| clock.place(p)) else {
        return Ok(());
    };
    clock.damage.frame(
        pts as f64 * f64::from(clock.enc_tb),
        is_concealed(f),
        clock.frame_seconds,
    );
    // Keyframes on the shared grid; elsewhere the encoder decides (never the source's types).
    f.set_kind(if key {
        picture::Type::I
    } else {
        picture::Type::None
    });
    outs.push(f, pts)?;
    clock.tick();
    Ok(())
}
