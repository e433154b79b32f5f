//! Objective quality of outputs against their source: PSNR and SSIM on the luma plane, by
//! FFmpeg's own `psnr` and `ssim` filters, the source scaled to each output's size. One decode
//! of the source serves every output.

use std::path::{Path, PathBuf};

use ffmpeg_next::{Rational, Rescale, filter, format, frame, media};
use serde::{Deserialize, Serialize};

use crate::conceal::{VideoConcealer, frame_ref};
use crate::probe::is_discarded;
use crate::probe::open_input;
use crate::transcode::{PostDecode, Window};
use crate::vmaf::VmafComparison;
use crate::{Deadline, MediaError};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// dB, from the mean squared error over all frames (as FFmpeg's average); 100 = identical.
    pub psnr: f64,
    /// Mean SSIM over all frames, 0..1.
    pub ssim: f64,
    /// Mean VMAF (model `vmaf_v0.6.1`, 0..100), when it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmaf: Option<f64>,
    pub frames: u64,
}

/// Decodes one file's video, frame by frame, as shown (lost frames concealed, rotation applied).
struct DecodedFrames {
    ictx: format::context::Input,
    stream: usize,
    decoder: ffmpeg_next::decoder::Video,
    post: Option<PostDecode>,
    queue: std::collections::VecDeque<frame::Video>,
    eof: bool,
    concealer: VideoConcealer,
    /// Only frames shown in `[start, end)` (stream time base), as a windowed transcode keeps.
    window: Option<(i64, i64)>,
}

impl DecodedFrames {
    fn open(path: &Path, rotation: u32, window: Option<Window>) -> Result<Self, MediaError> {
        let ictx = open_input(path)?;
        let s = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or(MediaError::NoVideoStream)?;
        let stream = s.index();
        let tb = s.time_base();
        let decoder = ffmpeg_next::codec::context::Context::from_parameters(s.parameters())
            .and_then(|mut c| {
                crate::probe::limit_decoder(&mut c);
                let mut d = c.decoder();
                d.set_packet_time_base(tb);
                d.video()
            })
            .map_err(|e| MediaError::UnsupportedCodec(format!("video decoder: {e}")))?;
        let post = PostDecode::new(&decoder, tb, rotation, None)?;
        let window = window.map(|w| {
            let wtb = Rational(w.time_base.0, w.time_base.1);
            (w.start.rescale(wtb, tb), w.end.rescale(wtb, tb))
        });
        Ok(Self {
            ictx,
            stream,
            decoder,
            post,
            queue: Default::default(),
            eof: false,
            concealer: VideoConcealer::default(),
            window,
        })
    }

    /// Next decoded frame (inside the window), rotation applied.
    fn next_raw(&mut self) -> Result<Option<frame::Video>, MediaError> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                match (self.window, f.pts()) {
                    (Some((start, _)), Some(pts)) if pts < start => continue,
                    (Some((_, end)), Some(pts)) if pts >= end => {
                        // Frames come in presentation order: the window is over.
                        self.queue.clear();
                        self.eof = true;
                        return Ok(None);
                    }
                    _ => return Ok(Some(f)),
                }
            }
            if self.eof {
                return Ok(None);
            }
            let mut pkt = ffmpeg_next::Packet::empty();
            match pkt.read(&mut self.ictx) {
                Ok(()) if pkt.stream() == self.stream => {
                    if !is_discarded(&pkt) {
                        self.concealer.sent(pkt.pts());
                    }
                    // Lost frames are concealed as the transcode conceals them, so that frames
                    // pair up one to one with the renditions'.
                    let _ = self.decoder.send_packet(&pkt);
                }
                Ok(()) => continue,
                Err(ffmpeg_next::Error::Eof) => {
                    self.eof = true;
                    let _ = self.decoder.send_eof();
                }
                Err(e) => return Err(MediaError::CorruptStream(e.to_string())),
            }
            let mut f = frame::Video::empty();
            while self.decoder.receive_frame(&mut f).is_ok() {
                let ts = f.timestamp();
                f.set_pts(ts);
                for lost in self.concealer.decoded(&mut f)? {
                    self.show(lost)?;
                }
                self.show(std::mem::replace(&mut f, frame::Video::empty()))?;
            }
            if self.eof {
                for lost in self.concealer.finish()? {
                    self.show(lost)?;
                }
                if let Some(p) = self.post.as_mut() {
                    p.flush()?;
                    self.queue.extend(p.drain_frames());
                }
            }
        }
    }

    fn show(&mut self, f: frame::Video) -> Result<(), MediaError> {
        match self.post.as_mut() {
            Some(p) => {
                p.push(&f)?;
                self.queue.extend(p.drain_frames());
            }
            None => self.queue.push_back(f),
        }
        Ok(())
    }
}

/// One output's comparison: FFmpeg's `psnr` and `ssim` filters on the luma plane as stored
/// (its own range: `extractplanes`, not a conversion to gray, which would stretch a
/// limited-range Y and read ~1.3 dB low), the source scaled (bicubic) to the output's size.
/// Frames pair up in order (both get the same counter as timestamp), as the renditions keep
/// every source frame.
///
/// An output of more than 8 bits (the extreme tier's 10-bit HEVC and AV1) is compared at 10
/// bits, the source converted up: taken down to 8 bits, it would be dithered, and the dither
/// counts as error (on a camera clip at ~50 dB, SSIM 0.9954 instead of 0.9973, below the same
/// encoder's 8-bit output). PSNR stays on the usual scale (peak 1023 instead of 255).
struct Comparison {
    graph: filter::Graph,
    /// The largest sample value at the compared depth.
    peak: f64,
    pts: i64,
    mse_sum: f64,
    ssim_sum: f64,
    frames: u64,
}

/// A filter graph fed a pair of frames per step (sources `ref` and `dist`, as `reference` and
/// `distorted` are), read from the sinks named in `sinks`.
pub(crate) fn pair_graph(
    reference: &frame::Video,
    distorted: &frame::Video,
    spec: &str,
    sinks: &[&str],
) -> Result<filter::Graph, MediaError> {
    let buffer = |f: &frame::Video| {
        format!(
            "video_size={}x{}:pix_fmt={}:time_base=1/25:pixel_aspect=1/1",
            f.width(),
            f.height(),
            ffmpeg_next::ffi::AVPixelFormat::from(f.format()) as i32,
        )
    };
    let mut graph = filter::Graph::new();
    let find =
        |name| filter::find(name).ok_or(MediaError::UnsupportedCodec(format!("no {name} filter")));
    let source = find("buffer")?;
    graph
        .add(&source, "dist", &buffer(distorted))
        .and_then(|_| graph.add(&source, "ref", &buffer(reference)))
        .map_err(MediaError::ffmpeg("creating the quality sources"))?;
    let sink = find("buffersink")?;
    for name in sinks {
        graph
            .add(&sink, name, "")
            .map_err(MediaError::ffmpeg("creating the quality sink"))?;
    }
    let mut parser = graph
        .output("dist", 0)
        .and_then(|p| p.output("ref", 0))
        .map_err(MediaError::ffmpeg("building the quality graph"))?;
    for name in sinks {
        parser = parser
            .input(name, 0)
            .map_err(MediaError::ffmpeg("building the quality graph"))?;
    }
    parser
        .parse(spec)
        .map_err(MediaError::ffmpeg("building the quality graph"))?;
    graph
        .validate()
        .map_err(MediaError::ffmpeg("validating the quality graph"))?;
    Ok(graph)
}

/// Feeds one pair, both stamped `pts`; the frames are left as they are (the graph takes new
/// references to them).
pub(crate) fn feed_pair(
    graph: &mut filter::Graph,
    reference: &frame::Video,
    distorted: &frame::Video,
    pts: i64,
) -> Result<(), MediaError> {
    for (name, f) in [("ref", reference), ("dist", distorted)] {
        let mut f = frame_ref(f)?;
        f.set_pts(Some(pts));
        graph
            .get(name)
            .expect("a pair graph")
            .source()
            .add(&f)
            .map_err(MediaError::ffmpeg("comparing frames"))?;
    }
    Ok(())
}

pub(crate) fn flush_pair(graph: &mut filter::Graph) -> Result<(), MediaError> {
    for name in ["ref", "dist"] {
        graph
            .get(name)
            .expect("a pair graph")
            .source()
            .flush()
            .map_err(MediaError::ffmpeg("flushing the quality graph"))?;
    }
    Ok(())
}

impl Comparison {
    fn new(reference: &frame::Video, distorted: &frame::Video) -> Result<Self, MediaError> {
        let (format, peak) = if bit_depth(distorted) > 8 {
            ("yuv420p10le", 1023.0)
        } else {
            ("yuv420p", 255.0)
        };
        let spec = format!(
            "[dist]format={format},extractplanes=y[d];\
             [ref]scale={}:{}:flags=bicubic,format={format},extractplanes=y,split[r1][r2];\
             [d][r1]psnr[p];[p][r2]ssim[out]",
            distorted.width(),
            distorted.height()
        );
        Ok(Self {
            graph: pair_graph(reference, distorted, &spec, &["out"])?,
            peak,
            pts: 0,
            mse_sum: 0.0,
            ssim_sum: 0.0,
            frames: 0,
        })
    }

    fn push(
        &mut self,
        reference: &frame::Video,
        distorted: &frame::Video,
    ) -> Result<(), MediaError> {
        feed_pair(&mut self.graph, reference, distorted, self.pts)?;
        self.pts += 1;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), MediaError> {
        let mut f = frame::Video::empty();
        while self
            .graph
            .get("out")
            .expect("added in new")
            .sink()
            .frame(&mut f)
            .is_ok()
        {
            let meta = f.metadata();
            let value = |key: &str| meta.get(key).and_then(|v| v.parse::<f64>().ok());
            let (Some(mse), Some(ssim)) = (value("lavfi.psnr.mse.y"), value("lavfi.ssim.Y")) else {
                return Err(MediaError::CorruptStream(
                    "the quality filters reported no score".into(),
                ));
            };
            self.mse_sum += mse;
            self.ssim_sum += ssim;
            self.frames += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Quality, MediaError> {
        flush_pair(&mut self.graph)?;
        self.drain()?;
        let n = self.frames.max(1) as f64;
        let m = self.mse_sum / n;
        Ok(Quality {
            psnr: if m <= 1e-10 {
                100.0
            } else {
                (10.0 * (self.peak * self.peak / m).log10()).min(100.0)
            },
            ssim: self.ssim_sum / n,
            vmaf: None,
            frames: self.frames,
        })
    }
}

/// Bits per sample of a frame's first component.
fn bit_depth(f: &frame::Video) -> i32 {
    let format: ffmpeg_next::ffi::AVPixelFormat = f.format().into();
    // SAFETY: the descriptor table is static; a known format has one.
    unsafe {
        let d = ffmpeg_next::ffi::av_pix_fmt_desc_get(format);
        if d.is_null() { 8 } else { (*d).comp[0].depth }
    }
}

/// PSNR and SSIM of each output against `source` (rotation: as applied when encoding), by
/// FFmpeg's `psnr` and `ssim` filters, so the numbers compare with every other FFmpeg-based
/// tool's. PSNR is from the mean squared error over all frames (as FFmpeg's average).
pub fn measure(
    source: &Path,
    rotation: u32,
    outputs: &[PathBuf],
    deadline: Deadline,
) -> Result<Vec<Quality>, MediaError> {
    measure_window(source, None, rotation, outputs, None, deadline)
}

/// As `measure`, against the frames of `source` shown inside `window` only (outputs of a
/// windowed transcode); with VMAF too when `vmaf` names the `vmaf` tool (`vmaf::vmaf_tool`).
pub fn measure_window(
    source: &Path,
    window: Option<Window>,
    rotation: u32,
    outputs: &[PathBuf],
    vmaf: Option<&Path>,
    deadline: Deadline,
) -> Result<Vec<Quality>, MediaError> {
    crate::init();
    let mut src = DecodedFrames::open(source, rotation, window)?;
    let mut outs = outputs
        .iter()
        .map(|p| DecodedFrames::open(p, 0, None))
        .collect::<Result<Vec<_>, _>>()?;
    type Pair = (Comparison, Option<VmafComparison>);
    let mut comparisons: Vec<Option<Pair>> = outs.iter().map(|_| None).collect();
    loop {
        deadline.check()?;
        let Some(reference) = src.next_raw()? else {
            break;
        };
        for (o, c) in outs.iter_mut().zip(comparisons.iter_mut()) {
            let Some(dist) = o.next_raw()? else {
                continue;
            };
            if c.is_none() {
                let perceptual = match vmaf {
                    Some(tool) => Some(VmafComparison::new(tool, &reference, &dist)?),
                    None => None,
                };
                *c = Some((Comparison::new(&reference, &dist)?, perceptual));
            }
            let (objective, perceptual) = c.as_mut().expect("set above");
            if let Some(p) = perceptual {
                p.push(&reference, &dist)?;
            }
            objective.push(&reference, &dist)?;
        }
    }
    comparisons
        .into_iter()
        .map(|c| match c {
            Some((objective, perceptual)) => {
                let mut q = objective.finish()?;
                q.vmaf = perceptual.map(VmafComparison::finish).transpose()?;
                Ok(q)
            }
            None => Ok(Quality {
                psnr: 0.0,
                ssim: 0.0,
                vmaf: None,
                frames: 0,
            }),
        })
        .collect()
}
