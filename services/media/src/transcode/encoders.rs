//! Opening video encoders: x264/x265/SVT-AV1 by name, or a GPU encoder (NVENC, VAAPI, QSV)
//! when one is detected.

use ffmpeg_next::{Rational, codec, encoder, format, threading};

use crate::MediaError;
use crate::hw::{HwFrames, needs_device_frames};

pub(super) struct EncoderSettings {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) enc_tb: Rational,
    pub(super) frame_rate: Rational,
    pub(super) gop: u32,
    pub(super) b_frames: usize,
    pub(super) threads: Option<usize>,
    pub(super) pixel_format: format::Pixel,
}

/// An open video encoder. SVT-AV1 (1.4.1 in Debian 12) keeps a process-wide table of the
/// machine's processors that each encoder's open allocates and each close frees, with no lock:
/// two AV1 encoders opening or closing at once in one process can crash it (a SIGSEGV in the
/// test suite, with two extreme encodes in one process; upstream's fix guards that
/// initialization, SVT-AV1 merge request 2605). Their opens and closes therefore take one
/// process-wide lock; encoding itself runs in parallel.
pub(super) struct OpenEncoder {
    inner: std::mem::ManuallyDrop<encoder::Video>,
    serialized: bool,
}

/// Held while an SVT-AV1 encoder opens or closes.
static SVT_LIFECYCLE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn svt_lifecycle(serialized: bool) -> Option<std::sync::MutexGuard<'static, ()>> {
    serialized.then(|| {
        SVT_LIFECYCLE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    })
}

impl std::ops::Deref for OpenEncoder {
    type Target = encoder::Video;
    fn deref(&self) -> &encoder::Video {
        &self.inner
    }
}

impl std::ops::DerefMut for OpenEncoder {
    fn deref_mut(&mut self) -> &mut encoder::Video {
        &mut self.inner
    }
}

impl Drop for OpenEncoder {
    fn drop(&mut self) {
        let _lock = svt_lifecycle(self.serialized);
        // SAFETY: dropped once, here; `inner` is not used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.inner) };
    }
}

/// Finds and opens the video encoder called `name`.
pub(super) fn open_encoder(
    name: &str,
    s: &EncoderSettings,
    mut opts: ffmpeg_next::Dictionary<'static>,
    hw: Option<&HwFrames>,
) -> Result<(ffmpeg_next::Codec, OpenEncoder), MediaError> {
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
    let serialized = name == "libsvtav1";
    let lock = svt_lifecycle(serialized);
    // SVT-AV1 would start its threads real-time when it may (see `without_realtime`).
    let opened = crate::priority::without_realtime(|| enc.open_with(opts));
    drop(lock);
    let encoder = opened.map_err(MediaError::ffmpeg("opening a video encoder"))?;
    Ok((
        codec,
        OpenEncoder {
            inner: std::mem::ManuallyDrop::new(encoder),
            serialized,
        },
    ))
}

/// Options for the GPU H.264 encoders: constant quality capped at the rung's peak rate.
pub(super) fn gpu_options(name: &str, max_bitrate: u32) -> ffmpeg_next::Dictionary<'static> {
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

pub(super) fn detect_uncached() -> Vec<String> {
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
pub(super) fn open_gpu_encoder(
    name: &str,
    settings: &EncoderSettings,
    max_bitrate: u32,
) -> Result<(ffmpeg_next::Codec, OpenEncoder, Option<HwFrames>), MediaError> {
    let hw = if needs_device_frames(name) {
        Some(HwFrames::new(name, settings.width, settings.height)?)
    } else {
        None
    };
    let (codec, enc) = open_encoder(name, settings, gpu_options(name, max_bitrate), hw.as_ref())?;
    Ok((codec, enc, hw))
}
