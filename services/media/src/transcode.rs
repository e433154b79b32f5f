//! Ladder transcode: the input is decoded once; each decoded frame passes one shared post-decode
//! graph (rotation, watermark) and then every rung's own scaler and encoder. Audio, when asked
//! for, is decoded and encoded to AAC once and the same packets go into every output.
//!
//! The same code encodes a whole source (`window: None`) or one slice of it (the frames whose
//! presentation time falls inside the window), so a sliced encode and a monolithic one share
//! every setting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffmpeg_next::{
    Packet, Rational, Rescale, codec, encoder, filter, format, frame, media, picture,
    software::scaling, threading,
};
use serde::{Deserialize, Serialize};
use vtx_domain::Rung;

use crate::audio::AudioPipe;
use crate::cascade::{cascade_parents, feeding_order};
use crate::conceal::{Concealed, DamageCount, DamagePolicy, VideoConcealer, is_concealed};
use crate::encoder::{Tier, VideoCodec, codec_string, encoder_options};
use crate::hw::{HwFrames, needs_device_frames};
use crate::probe::{is_discarded, next_packet, nominal_frame_rate, open_input, rational_to_f64};
use crate::{Deadline, MediaError};

#[derive(Clone, Debug)]
pub struct RenditionOutput {
    pub rung: Rung,
    pub codec: VideoCodec,
    pub path: PathBuf,
}

/// A presentation-time window `[start, end)` in `time_base` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
    pub time_base: (i32, i32),
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

/// Runs the ladder transcode. On any error every output file is removed, so a failure never
/// leaves a half-written rendition behind.
pub fn transcode_ladder(req: &TranscodeRequest) -> Result<Vec<RenditionReport>, MediaError> {
    crate::init();
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

/// Decides which frames are kept and what time each gets.
struct Clock {
    window: Option<(i64, i64)>,
    /// Input time that becomes output time 0.
    base: Option<i64>,
    in_tb: Rational,
    enc_tb: Rational,
    /// The window's start on the whole video's timeline, in `enc_tb`.
    offset: i64,
    gop_ticks: i64,
    last_gop: Option<i64>,
    encoded: u64,
    progress: Option<FrameProgress>,
    /// Concealed frames among those kept.
    damage: DamageCount,
    /// One frame at the nominal rate, in seconds.
    frame_seconds: f64,
}

impl Clock {
    /// Output pts for a frame at input time `pts` and whether it must be a keyframe, or `None`
    /// when it falls outside the window. Keyframes: the first frame, and the first frame in each
    /// GOP-long interval of the whole video's timeline.
    fn place(&mut self, pts: i64) -> Option<(i64, bool)> {
        if let Some((start, end)) = self.window
            && (pts < start || pts >= end)
        {
            return None;
        }
        let base = *self.base.get_or_insert(pts);
        let out = (pts - base).rescale(self.in_tb, self.enc_tb);
        let gop = (out + self.offset).div_euclid(self.gop_ticks);
        let key = self.last_gop != Some(gop);
        self.last_gop = Some(gop);
        Some((out, key))
    }

    fn tick(&mut self) {
        self.encoded += 1;
        if let Some(p) = &self.progress {
            p(self.encoded);
        }
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

/// Rotation and watermark, applied once per decoded frame before the rungs split off.
pub(crate) struct PostDecode {
    graph: filter::Graph,
}

impl PostDecode {
    pub(crate) fn new(
        dec: &ffmpeg_next::decoder::Video,
        tb: Rational,
        rotation: u32,
        watermark: Option<&Path>,
    ) -> Result<Option<Self>, MediaError> {
        let rotate = match rotation % 360 {
            90 => "transpose=clock",
            180 => "hflip,vflip",
            270 => "transpose=cclock",
            _ => "null",
        };
        if rotate == "null" && watermark.is_none() {
            return Ok(None);
        }
        let spec = match watermark {
            None => rotate.to_string(),
            Some(path) => {
                let p = path.to_str().filter(|s| {
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
                });
                let p = p.ok_or_else(|| {
                    MediaError::Io(std::io::Error::other(
                        "watermark path may hold only [A-Za-z0-9/._-]",
                    ))
                })?;
                format!(
                    "[in]{rotate}[base];movie={p}[wm];[base][wm]overlay=main_w-overlay_w-16:16[out]"
                )
            }
        };
        let sar = dec.aspect_ratio();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            dec.width(),
            dec.height(),
            ffmpeg_next::ffi::AVPixelFormat::from(dec.format()) as i32,
            tb.numerator(),
            tb.denominator(),
            sar.numerator().max(1),
            sar.denominator().max(1),
        );
        let mut graph = filter::Graph::new();
        graph
            .add(&filter::find("buffer").expect("buffer filter"), "in", &args)
            .map_err(MediaError::ffmpeg("creating the video source"))?;
        graph
            .add(
                &filter::find("buffersink").expect("buffersink filter"),
                "out",
                "",
            )
            .map_err(MediaError::ffmpeg("creating the video sink"))?;
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(MediaError::ffmpeg("building the post-decode graph"))?;
        graph
            .validate()
            .map_err(MediaError::ffmpeg("validating the post-decode graph"))?;
        Ok(Some(Self { graph }))
    }

    pub(crate) fn push(&mut self, f: &frame::Video) -> Result<(), MediaError> {
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .add(f)
            .map_err(MediaError::ffmpeg("filtering video"))
    }

    pub(crate) fn flush(&mut self) -> Result<(), MediaError> {
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .flush()
            .map_err(MediaError::ffmpeg("flushing the video graph"))
    }

    /// Frames the graph has ready.
    pub(crate) fn drain_frames(&mut self) -> Vec<frame::Video> {
        let mut v = Vec::new();
        loop {
            let mut f = frame::Video::empty();
            if self
                .graph
                .get("out")
                .expect("added in new")
                .sink()
                .frame(&mut f)
                .is_err()
            {
                return v;
            }
            v.push(f);
        }
    }

    fn drain(&mut self, clock: &mut Clock, outs: &mut Rungs) -> Result<(), MediaError> {
        for mut f in self.drain_frames() {
            encode_frame(&mut f, clock, outs)?;
        }
        Ok(())
    }
}

struct EncoderSettings {
    width: u32,
    height: u32,
    enc_tb: Rational,
    frame_rate: Rational,
    gop: u32,
    b_frames: usize,
    threads: Option<usize>,
    pixel_format: format::Pixel,
}

/// Finds and opens the video encoder called `name`.
fn open_encoder(
    name: &str,
    s: &EncoderSettings,
    mut opts: ffmpeg_next::Dictionary<'static>,
    hw: Option<&HwFrames>,
) -> Result<(ffmpeg_next::Codec, encoder::Video), MediaError> {
    let codec = encoder::find_by_name(name)
        .ok_or_else(|| MediaError::UnsupportedCodec(format!("{name} encoder missing")))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(MediaError::ffmpeg("creating a video encoder"))?;
    enc.set_width(s.width);
    enc.set_height(s.height);
    enc.set_format(s.pixel_format);
    if let Some(hw) = hw {
        // SAFETY: the context is live and not yet opened.
        hw.attach(unsafe { enc.as_mut_ptr() });
    }
    enc.set_aspect_ratio(Rational(1, 1));
    // 1/fps, as the ffmpeg command line uses: with a fine time base instead, MP4 samples come
    // back without durations. Variable-rate input keeps its own clock.
    enc.set_time_base(s.enc_tb);
    enc.set_frame_rate(Some(s.frame_rate));
    enc.set_gop(s.gop);
    if codec.id() == codec::Id::H264 {
        enc.set_max_b_frames(s.b_frames);
    }
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    if let Some(t) = s.threads {
        enc.set_threading(threading::Config {
            kind: threading::Type::Frame,
            count: t,
            ..Default::default()
        });
        opts.set("threads", &t.to_string());
    }
    // SVT-AV1 would start its threads real-time when it may (see `without_realtime`).
    let encoder = crate::priority::without_realtime(|| enc.open_with(opts))
        .map_err(MediaError::ffmpeg("opening a video encoder"))?;
    Ok((codec, encoder))
}

/// Options for the GPU H.264 encoders: constant quality capped at the rung's peak rate.
fn gpu_options(name: &str, max_bitrate: u32) -> ffmpeg_next::Dictionary<'static> {
    let mut o = ffmpeg_next::Dictionary::new();
    if name.contains("nvenc") {
        o.set("preset", "p4");
        o.set("rc", "vbr");
        o.set("cq", "23");
    }
    o.set("maxrate", &max_bitrate.to_string());
    o.set("bufsize", &(u64::from(max_bitrate) * 2).to_string());
    o
}

/// H.264 encoders this machine can open, best first; always ends with "libx264". A GPU encoder
/// counts only if it opens a small test session (compiled into FFmpeg is not enough: the device
/// and driver must be there too). Probed once per process.
pub fn detect_h264_encoders() -> Vec<String> {
    static FOUND: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(detect_uncached).clone()
}

/// Whether this machine's FFmpeg has every software encoder `tier` needs (libx264; for the
/// extreme tier libx265 and libsvtav1, which a slimmer FFmpeg build may lack). Software encoders
/// need no device, so being built in is enough (opening libx265 or libsvtav1 only to close it
/// again can stall).
pub fn can_encode_tier(tier: crate::Tier) -> bool {
    crate::init();
    crate::tier_codecs(tier)
        .iter()
        .all(|c| encoder::find_by_name(c.encoder_name()).is_some())
}

fn detect_uncached() -> Vec<String> {
    crate::init();
    let settings = EncoderSettings {
        width: 256,
        height: 256,
        enc_tb: Rational(1, 25),
        frame_rate: Rational(25, 1),
        gop: 50,
        b_frames: 0,
        threads: Some(1),
        pixel_format: format::Pixel::YUV420P,
    };
    let mut found: Vec<String> = ["h264_nvenc", "h264_qsv", "h264_vaapi"]
        .into_iter()
        .filter(|name| encoder::find_by_name(name).is_some())
        .filter(|name| open_gpu_encoder(name, &settings, 1_000_000).is_ok())
        .map(str::to_string)
        .collect();
    found.push("libx264".into());
    found
}

/// Opens a GPU encoder as the transcode would: with a device and a frame pool when it takes
/// frames in device memory (VAAPI, QSV), which fails on a machine without that device.
fn open_gpu_encoder(
    name: &str,
    settings: &EncoderSettings,
    max_bitrate: u32,
) -> Result<(ffmpeg_next::Codec, encoder::Video, Option<HwFrames>), MediaError> {
    let hw = if needs_device_frames(name) {
        Some(HwFrames::new(name, settings.width, settings.height)?)
    } else {
        None
    };
    let (codec, enc) = open_encoder(name, settings, gpu_options(name, max_bitrate), hw.as_ref())?;
    Ok((codec, enc, hw))
}

/// One rung: scaler, encoder and MP4 muxer.
struct VideoOut {
    name: String,
    codec: VideoCodec,
    path: PathBuf,
    octx: format::context::Output,
    scaler: Option<scaling::Context>,
    /// What the scaler writes: the encoder's pixel format (or the device pool's upload format).
    pixel_format: format::Pixel,
    encoder: encoder::Video,
    /// Device frame pool of a VAAPI/QSV encoder: scaled frames are uploaded into it.
    hw: Option<HwFrames>,
    width: u32,
    height: u32,
    enc_tb: Rational,
    /// One frame in `enc_tb`, for packets the encoder leaves without a duration.
    frame_ticks: i64,
    last_pts: Option<i64>,
    v_ost: usize,
    v_ost_tb: Rational,
    a_ost: Option<(usize, Rational)>,
    frames: u64,
    first_pts: Option<i64>,
    end_pts: i64,
}

impl VideoOut {
    fn new(
        out: &RenditionOutput,
        req: &TranscodeRequest,
        frame_rate: Rational,
        enc_tb: Rational,
        gop: u32,
        audio_encoder: Option<&encoder::Audio>,
    ) -> Result<Self, MediaError> {
        let mut octx = format::output_as(&out.path, "mp4")
            .map_err(MediaError::ffmpeg("creating the MP4 output"))?;
        let settings = EncoderSettings {
            width: out.rung.width,
            height: out.rung.height,
            enc_tb,
            frame_rate,
            gop,
            b_frames: if req.tier == Tier::Fast { 2 } else { 3 },
            threads: req.threads,
            pixel_format: out.codec.pixel_format(req.tier),
        };
        let default_name = out.codec.encoder_name();
        let preferred = req
            .h264_encoder
            .as_deref()
            .filter(|n| out.codec == VideoCodec::H264 && *n != default_name);
        let (codec, encoder, hw) = match preferred
            .map(|name| open_gpu_encoder(name, &settings, out.rung.max_bitrate))
        {
            Some(Ok(opened)) => opened,
            other => {
                if let (Some(name), Some(Err(e))) = (preferred, other) {
                    tracing::warn!(encoder = name, error = %e, "encoder failed to open; falling back to {default_name}");
                }
                let mut opts = encoder_options(out.codec, req.tier, out.rung.max_bitrate, gop);
                if let Some(crf) = req.crf {
                    opts.set("crf", &crf.to_string());
                }
                let (codec, encoder) = open_encoder(default_name, &settings, opts, None)?;
                (codec, encoder, None)
            }
        };
        let (width, height) = (out.rung.width, out.rung.height);

        let v_ost = {
            let mut ost = octx
                .add_stream(codec)
                .map_err(MediaError::ffmpeg("adding the video stream"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(enc_tb);
            // Let the muxer pick the tag (avc1, hvc1, av01).
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.index()
        };
        if out.codec == VideoCodec::Hevc {
            // hvc1 (parameter sets in the sample entry) is what Apple players require.
            let tag = u32::from_le_bytes(*b"hvc1");
            unsafe {
                (*octx
                    .stream(v_ost)
                    .expect("added")
                    .parameters()
                    .as_ptr()
                    .cast_mut())
                .codec_tag = tag
            };
        }
        let a_index = match audio_encoder {
            Some(aenc) => {
                let mut ost = octx
                    .add_stream(encoder::find(codec::Id::AAC))
                    .map_err(MediaError::ffmpeg("adding the audio stream"))?;
                ost.set_parameters(aenc);
                ost.set_time_base(Rational(1, aenc.rate() as i32));
                unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
                Some(ost.index())
            }
            None => None,
        };
        let mut mux_opts = ffmpeg_next::Dictionary::new();
        mux_opts.set("movflags", "+faststart");
        octx.write_header_with(mux_opts)
            .map_err(MediaError::ffmpeg("writing the MP4 header"))?;
        let v_ost_tb = octx.stream(v_ost).expect("stream just added").time_base();
        let a_ost = a_index.map(|i| (i, octx.stream(i).expect("stream just added").time_base()));
        let frame_ticks = 1i64.rescale(frame_rate.invert(), enc_tb).max(1);
        Ok(Self {
            name: out.rung.name.clone(),
            codec: out.codec,
            path: out.path.clone(),
            octx,
            scaler: None,
            pixel_format: hw
                .as_ref()
                .map_or(settings.pixel_format, HwFrames::sw_format),
            encoder,
            hw,
            width,
            height,
            enc_tb,
            frame_ticks,
            last_pts: None,
            v_ost,
            v_ost_tb,
            a_ost,
            frames: 0,
            first_pts: None,
            end_pts: 0,
        })
    }

    /// Scales and encodes one frame; returns the scaled frame (before any upload to a device).
    fn push_frame(&mut self, input: &frame::Video, pts: i64) -> Result<frame::Video, MediaError> {
        let stale = self.scaler.as_ref().is_none_or(|s| {
            s.input().width != input.width()
                || s.input().height != input.height()
                || s.input().format != input.format()
        });
        if stale {
            self.scaler = Some(
                scaling::Context::get(
                    input.format(),
                    input.width(),
                    input.height(),
                    self.pixel_format,
                    self.width,
                    self.height,
                    scaling::Flags::BICUBIC,
                )
                .map_err(MediaError::ffmpeg("creating a scaler"))?,
            );
        }
        // A fresh frame each time: the encoder may still hold a reference to the previous one.
        let mut scaled = frame::Video::empty();
        self.scaler
            .as_mut()
            .expect("scaler set above")
            .run(input, &mut scaled)
            .map_err(MediaError::ffmpeg("scaling"))?;
        // Strictly increasing, even where rounding to the encoder clock makes two frames meet.
        let pts = self.last_pts.map_or(pts, |last| pts.max(last + 1));
        self.last_pts = Some(pts);
        scaled.set_pts(Some(pts));
        scaled.set_kind(input.kind());
        let sent = match &self.hw {
            Some(hw) => {
                let uploaded: frame::Video = hw.upload(&scaled)?;
                self.encoder.send_frame(&uploaded)
            }
            None => self.encoder.send_frame(&scaled),
        };
        sent.map_err(MediaError::ffmpeg("encoding video"))?;
        self.drain_encoder()?;
        Ok(scaled)
    }

    fn drain_encoder(&mut self) -> Result<(), MediaError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            // FFmpeg 5.1's libx264 leaves durations at 0, and the MP4 muxer then drops the
            // last frame's duration: set it before rescaling.
            if pkt.duration() <= 0 {
                pkt.set_duration(self.frame_ticks);
            }
            if let Some(pts) = pkt.pts() {
                self.first_pts = Some(self.first_pts.map_or(pts, |f| f.min(pts)));
                self.end_pts = self.end_pts.max(pts + pkt.duration());
            }
            pkt.set_stream(self.v_ost);
            pkt.set_position(-1);
            pkt.rescale_ts(self.enc_tb, self.v_ost_tb);
            pkt.write_interleaved(&mut self.octx)
                .map_err(MediaError::ffmpeg("writing video"))?;
            self.frames += 1;
        }
        Ok(())
    }

    fn write_audio(&mut self, pkt: &Packet, enc_tb: Rational) -> Result<(), MediaError> {
        let Some((idx, tb)) = self.a_ost else {
            return Ok(());
        };
        let mut p = pkt.clone();
        p.set_stream(idx);
        p.set_position(-1);
        p.rescale_ts(enc_tb, tb);
        p.write_interleaved(&mut self.octx)
            .map_err(MediaError::ffmpeg("writing audio"))
    }

    fn finish(
        mut self,
        has_audio: bool,
        concealed: Concealed,
    ) -> Result<RenditionReport, MediaError> {
        self.encoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the encoder"))?;
        self.drain_encoder()?;
        self.octx
            .write_trailer()
            .map_err(MediaError::ffmpeg("writing the MP4 trailer"))?;
        let extradata = unsafe {
            let ctx = self.encoder.as_ptr();
            let (ptr, len) = ((*ctx).extradata, (*ctx).extradata_size);
            if ptr.is_null() || len <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(ptr, len as usize).to_vec()
            }
        };
        let bytes = std::fs::metadata(&self.path)?.len();
        let ticks = self.end_pts - self.first_pts.unwrap_or(0);
        let duration_seconds = ticks as f64 * f64::from(self.enc_tb.numerator())
            / f64::from(self.enc_tb.denominator());
        let bitrate = if duration_seconds > 0.0 {
            (bytes as f64 * 8.0 / duration_seconds) as u64
        } else {
            0
        };
        Ok(RenditionReport {
            name: self.name,
            codec: self.codec,
            codec_string: codec_string(self.codec, &extradata),
            path: self.path,
            width: self.width,
            height: self.height,
            frames: self.frames,
            duration_seconds,
            bytes,
            bitrate,
            has_audio,
            concealed,
        })
    }
}
