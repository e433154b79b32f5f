//! The cover: a JPEG of a representative frame. Candidates are sampled from the first third of
//! the video (at most 10 s in); the one with the most luma detail wins, which skips black or
//! faded opening frames.

use std::path::Path;

use ffmpeg_next::{Rational, codec, encoder, format, frame, media, software::scaling};

use crate::probe::open_input;
use crate::{Deadline, MediaError};

/// Writes a JPEG of a representative frame of `video` (an encoded rendition, so rotation and
/// watermark are already applied) to `out`.
pub fn write_cover(video: &Path, out: &Path, deadline: Deadline) -> Result<(), MediaError> {
    crate::init();
    let mut ictx = open_input(video)?;
    let s = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let (index, tb) = (s.index(), s.time_base());
    let secs = |pts: i64| pts as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator());
    let total = if s.duration() > 0 {
        secs(s.duration())
    } else {
        30.0
    };
    let horizon = (total / 3.0).clamp(0.0, 10.0);
    let mut dec = codec::context::Context::from_parameters(s.parameters())
        .and_then(|mut c| {
            crate::probe::limit_decoder(&mut c);
            c.decoder().video()
        })
        .map_err(|e| MediaError::UnsupportedCodec(format!("video decoder: {e}")))?;

    let (mut best, mut best_score, mut next_sample) = (None::<frame::Video>, -1.0f64, 0.0f64);
    let mut pkt = ffmpeg_next::Packet::empty();
    let mut f = frame::Video::empty();
    'read: loop {
        deadline.check()?;
        let eof = if !crate::probe::next_packet(&mut ictx, &mut pkt)? {
            let _ = dec.send_eof();
            true
        } else if pkt.stream() == index {
            // A damaged packet only costs its frame a chance to be the cover.
            let _ = dec.send_packet(&pkt);
            false
        } else {
            continue;
        };
        while dec.receive_frame(&mut f).is_ok() {
            let t = secs(f.timestamp().unwrap_or(0));
            if t >= next_sample || best.is_none() {
                let score = luma_detail(&f);
                if score > best_score {
                    best_score = score;
                    best = Some(f.clone());
                }
                next_sample = t + 0.5;
            }
            if t > horizon {
                break 'read;
            }
        }
        if eof {
            break;
        }
    }
    let frame = best.ok_or_else(|| MediaError::CorruptStream("no frame for a cover".into()))?;
    encode_jpeg(&frame, out)
}

/// Standard deviation of luma: flat (black, faded) frames score low.
fn luma_detail(f: &frame::Video) -> f64 {
    let (w, h, stride) = (f.width() as usize, f.height() as usize, f.stride(0));
    let data = f.data(0);
    let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
    for y in (0..h).step_by(4) {
        for x in (0..w).step_by(4) {
            let v = f64::from(data[y * stride + x]);
            sum += v;
            sq += v * v;
            n += 1.0;
        }
    }
    if n == 0.0 {
        return 0.0;
    }
    (sq / n - (sum / n).powi(2)).max(0.0).sqrt()
}

fn encode_jpeg(f: &frame::Video, out: &Path) -> Result<(), MediaError> {
    let mjpeg = encoder::find(codec::Id::MJPEG)
        .ok_or_else(|| MediaError::UnsupportedCodec("MJPEG encoder missing".into()))?;
    let mut enc = codec::context::Context::new_with_codec(mjpeg)
        .encoder()
        .video()
        .map_err(MediaError::ffmpeg("creating the JPEG encoder"))?;
    enc.set_width(f.width());
    enc.set_height(f.height());
    enc.set_format(format::Pixel::YUVJ420P);
    enc.set_time_base(Rational(1, 25));
    let mut opts = ffmpeg_next::Dictionary::new();
    opts.set("qmin", "2");
    opts.set("qmax", "4");
    let mut enc = enc
        .open_with(opts)
        .map_err(MediaError::ffmpeg("opening the JPEG encoder"))?;
    let mut scaler = scaling::Context::get(
        f.format(),
        f.width(),
        f.height(),
        format::Pixel::YUVJ420P,
        f.width(),
        f.height(),
        scaling::Flags::BICUBIC,
    )
    .map_err(MediaError::ffmpeg("creating a scaler"))?;
    let mut j = frame::Video::empty();
    scaler
        .run(f, &mut j)
        .map_err(MediaError::ffmpeg("scaling"))?;
    j.set_pts(Some(0));
    enc.send_frame(&j)
        .map_err(MediaError::ffmpeg("encoding the cover"))?;
    enc.send_eof()
        .map_err(MediaError::ffmpeg("flushing the JPEG encoder"))?;
    let mut pkt = ffmpeg_next::Packet::empty();
    enc.receive_packet(&mut pkt)
        .map_err(MediaError::ffmpeg("encoding the cover"))?;
    let tmp = out.with_extension("jpg.part");
    std::fs::write(&tmp, pkt.data().unwrap_or_default())?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
