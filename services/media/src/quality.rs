//! Objective quality of outputs against their source: PSNR and SSIM on the luma plane, the
//! source scaled to each output's size. One decode of the source serves every output.

use std::path::{Path, PathBuf};

use ffmpeg_next::{format, frame, media, software::scaling};
use serde::{Deserialize, Serialize};

use crate::conceal::VideoConcealer;
use crate::probe::is_discarded;
use crate::probe::open_input;
use crate::transcode::PostDecode;
use crate::{Deadline, MediaError};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// dB, from the mean squared error over all frames (as FFmpeg's average); 100 = identical.
    pub psnr: f64,
    /// Mean SSIM over all frames, 0..1.
    pub ssim: f64,
    pub frames: u64,
}

/// Decodes one file's video, frame by frame, converted to gray at a fixed size.
struct GrayFrames {
    ictx: format::context::Input,
    stream: usize,
    decoder: ffmpeg_next::decoder::Video,
    post: Option<PostDecode>,
    scaler: Option<scaling::Context>,
    size: Option<(u32, u32)>,
    queue: std::collections::VecDeque<frame::Video>,
    eof: bool,
    concealer: VideoConcealer,
}

impl GrayFrames {
    fn open(path: &Path, rotation: u32) -> Result<Self, MediaError> {
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
        Ok(Self {
            ictx,
            stream,
            decoder,
            post,
            scaler: None,
            size: None,
            queue: Default::default(),
            eof: false,
            concealer: VideoConcealer::default(),
        })
    }

    /// Next decoded frame, rotation applied.
    fn next_raw(&mut self) -> Result<Option<frame::Video>, MediaError> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Ok(Some(f));
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

    /// Next frame as gray bytes at `size` (or its own size when `None`).
    fn next_gray(
        &mut self,
        size: Option<(u32, u32)>,
    ) -> Result<Option<(Vec<u8>, u32, u32)>, MediaError> {
        let Some(f) = self.next_raw()? else {
            return Ok(None);
        };
        let (w, h) = size.unwrap_or((f.width(), f.height()));
        if self.size != Some((w, h))
            || self
                .scaler
                .as_ref()
                .is_none_or(|s| s.input().format != f.format())
        {
            self.scaler = Some(
                scaling::Context::get(
                    f.format(),
                    f.width(),
                    f.height(),
                    format::Pixel::GRAY8,
                    w,
                    h,
                    scaling::Flags::BICUBIC,
                )
                .map_err(MediaError::ffmpeg("creating a scaler"))?,
            );
            self.size = Some((w, h));
        }
        let mut g = frame::Video::empty();
        self.scaler
            .as_mut()
            .expect("set above")
            .run(&f, &mut g)
            .map_err(MediaError::ffmpeg("scaling"))?;
        let stride = g.stride(0);
        let data = g.data(0);
        let mut out = Vec::with_capacity((w * h) as usize);
        for y in 0..h as usize {
            out.extend_from_slice(&data[y * stride..y * stride + w as usize]);
        }
        Ok(Some((out, w, h)))
    }
}

/// PSNR and SSIM of each output against `source` (rotation: as applied when encoding).
pub fn measure(
    source: &Path,
    rotation: u32,
    outputs: &[PathBuf],
    deadline: Deadline,
) -> Result<Vec<Quality>, MediaError> {
    crate::init();
    let mut src = GrayFrames::open(source, rotation)?;
    let mut outs = outputs
        .iter()
        .map(|p| GrayFrames::open(p, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let mut acc = vec![(0f64, 0f64, 0u64); outs.len()];
    loop {
        deadline.check()?;
        let Some(reference) = src.next_raw()? else {
            break;
        };
        for (o, a) in outs.iter_mut().zip(acc.iter_mut()) {
            let Some((dist, w, h)) = o.next_gray(None)? else {
                continue;
            };
            let refg = to_gray(&reference, w, h)?;
            a.0 += mse(&refg, &dist);
            a.1 += ssim(&refg, &dist, w as usize, h as usize);
            a.2 += 1;
        }
    }
    Ok(acc
        .into_iter()
        .map(|(mse_sum, ssim_sum, n)| {
            let n_f = n.max(1) as f64;
            let m = mse_sum / n_f;
            Quality {
                psnr: if m <= 1e-10 {
                    100.0
                } else {
                    (10.0 * (255.0f64 * 255.0 / m).log10()).min(100.0)
                },
                ssim: ssim_sum / n_f,
                frames: n,
            }
        })
        .collect())
}

fn to_gray(f: &frame::Video, w: u32, h: u32) -> Result<Vec<u8>, MediaError> {
    let mut s = scaling::Context::get(
        f.format(),
        f.width(),
        f.height(),
        format::Pixel::GRAY8,
        w,
        h,
        scaling::Flags::BICUBIC,
    )
    .map_err(MediaError::ffmpeg("creating a scaler"))?;
    let mut g = frame::Video::empty();
    s.run(f, &mut g).map_err(MediaError::ffmpeg("scaling"))?;
    let stride = g.stride(0);
    let data = g.data(0);
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        out.extend_from_slice(&data[y * stride..y * stride + w as usize]);
    }
    Ok(out)
}

fn mse(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (i32::from(x) - i32::from(y)).pow(2) as u64)
        .sum();
    sum as f64 / a.len().max(1) as f64
}

/// Mean SSIM over 8x8 windows at a stride of 4.
fn ssim(a: &[u8], b: &[u8], w: usize, h: usize) -> f64 {
    const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
    const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);
    if w < 8 || h < 8 {
        return if a == b { 1.0 } else { 0.0 };
    }
    let (mut total, mut count) = (0f64, 0u64);
    for y in (0..=h - 8).step_by(4) {
        for x in (0..=w - 8).step_by(4) {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0u64, 0u64, 0u64, 0u64, 0u64);
            for yy in y..y + 8 {
                let row = yy * w;
                for xx in x..x + 8 {
                    let (p, q) = (u64::from(a[row + xx]), u64::from(b[row + xx]));
                    sa += p;
                    sb += q;
                    saa += p * p;
                    sbb += q * q;
                    sab += p * q;
                }
            }
            let n = 64.0;
            let (ma, mb) = (sa as f64 / n, sb as f64 / n);
            let va = saa as f64 / n - ma * ma;
            let vb = sbb as f64 / n - mb * mb;
            let cov = sab as f64 / n - ma * mb;
            total += ((2.0 * ma * mb + C1) * (2.0 * cov + C2))
                / ((ma * ma + mb * mb + C1) * (va + vb + C2));
            count += 1;
        }
    }
    total / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_planes_are_perfect() {
        let a: Vec<u8> = (0..64 * 64).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(mse(&a, &a), 0.0);
        assert!((ssim(&a, &a, 64, 64) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn noise_lowers_both() {
        let a: Vec<u8> = (0..64 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<u8> = a
            .iter()
            .enumerate()
            .map(|(i, &v)| v.saturating_add((i % 5) as u8 * 3))
            .collect();
        assert!(mse(&a, &b) > 0.0);
        assert!(ssim(&a, &b, 64, 64) < 1.0);
    }
}
