//! Per-title rate factors: each rendition's constant-quality value is chosen for the frames it
//! will encode, from a few encodes of a short sample, so that it reaches a target quality with
//! as few bits as it takes (as ab-av1's crf search and Av1an's target quality do). Workers run
//! it on the slice they encode, so every slice gets the rate factor its own content needs and
//! all of a video's slices land at one quality.
//!
//! The search: the tier's default rate factor, then one a step away towards the target, then
//! the value where the line through both meets the target; one more encode there when that
//! value lies outside the two tried, and the line through the two nearest results decides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vtx_domain::QualityTarget;

use crate::encoder::{Tier, VideoCodec};
use crate::quality::{Quality, measure_window};
use crate::transcode::{RenditionOutput, TranscodeRequest, Window, transcode_ladder};
use crate::{Deadline, MediaError};

/// The sample: this many segments of the slice, spread over it (the whole slice when shorter).
///
/// One segment of 2 s in the middle: three 1 s segments spread over the slice were tried and
/// land further from the target on the whole slice (docs/benchmarks.md; likely because a 1 s
/// encode keeps less of x264's macroblock-tree gains than a long one).
pub const SAMPLE_SEGMENTS: usize = 1;
/// Seconds of each sample segment.
pub const SEGMENT_SECONDS: f64 = 2.0;
/// The second try's distance from the first, in rate-factor steps.
const STEP: f32 = 6.0;

/// What to search for.
pub struct Search<'a> {
    pub input: &'a Path,
    /// The frames that will be encoded (a slice); the sample is taken inside.
    pub window: Window,
    pub frame_rate: (i32, i32),
    pub rotation: u32,
    pub tier: Tier,
    pub target: QualityTarget,
    /// The encodes' psychovisual setting (`TranscodeRequest::psychovisual`).
    pub psychovisual: bool,
    /// The `vmaf` tool, for a VMAF target.
    pub vmaf: Option<&'a Path>,
    pub threads: Option<usize>,
    /// Sample encodes and their measurements go here (removed afterwards).
    pub scratch: &'a Path,
    pub deadline: Deadline,
}

/// One sample encode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub crf: f32,
    /// On the target's scale (PSNR dB, or SSIM as dB: -10 log10(1 - SSIM)).
    pub score: f64,
    pub bitrate: u64,
}

/// The rate factor chosen for one output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub crf: f32,
    /// The target on the score's scale (for `FastTier`, what the fast tier reached).
    pub target: f64,
    pub probes: Vec<Probe>,
}

/// The score `target` is judged on.
fn score(target: QualityTarget, q: &Quality) -> f64 {
    match target {
        QualityTarget::FastTier | QualityTarget::Psnr(_) => q.psnr,
        QualityTarget::Ssim(_) => ssim_db(q.ssim),
        QualityTarget::Vmaf(_) => q.vmaf.unwrap_or(f64::NAN),
    }
}

fn ssim_db(ssim: f64) -> f64 {
    -10.0 * (1.0 - ssim).max(1e-10).log10()
}

/// Chooses a rate factor for each of `outputs` (their rungs and codecs; paths unused).
pub fn choose_crfs(s: &Search, outputs: &[RenditionOutput]) -> Result<Vec<Choice>, MediaError> {
    std::fs::create_dir_all(s.scratch)?;
    let sample = &sample_windows(s.window, s.frame_rate, SAMPLE_SEGMENTS, SEGMENT_SECONDS);
    let targets: Vec<f64> = match s.target {
        QualityTarget::Vmaf(_) if s.vmaf.is_none() => {
            return Err(MediaError::UnsupportedCodec(
                "a VMAF target needs the vmaf tool (VTX_VMAF_TOOL)".into(),
            ));
        }
        QualityTarget::Vmaf(v) => vec![v; outputs.len()],
        QualityTarget::Psnr(db) => vec![db; outputs.len()],
        QualityTarget::Ssim(v) => vec![ssim_db(v); outputs.len()],
        QualityTarget::FastTier => {
            // What the fast tier reaches on the same frames at each rung.
            let fast: Vec<RenditionOutput> = outputs
                .iter()
                .map(|o| RenditionOutput {
                    codec: VideoCodec::H264,
                    crf: None,
                    ..o.clone()
                })
                .collect();
            let (q, _) = encode_sample(s, sample, Tier::Fast, &fast, "fast")?;
            if q.iter().any(|q| q.frames == 0) {
                return Err(MediaError::CorruptStream(
                    "the fast tier's sample measured nothing".into(),
                ));
            }
            q.iter().map(|q| score(s.target, q)).collect()
        }
    };
    let mut probes: Vec<Vec<Probe>> = vec![Vec::new(); outputs.len()];
    let first: Vec<f32> = outputs
        .iter()
        .map(|o| o.codec.default_crf(s.tier))
        .collect();
    try_crfs(s, sample, outputs, &first, &mut probes, "a")?;
    let second: Vec<f32> = outputs
        .iter()
        .zip(&probes)
        .zip(&targets)
        .map(|((o, p), &t)| {
            let towards = if p[0].score > t { STEP } else { -STEP };
            clamp(o.codec, p[0].crf + towards)
        })
        .collect();
    try_crfs(s, sample, outputs, &second, &mut probes, "b")?;
    // A third try where the line through the first two leaves the range they span.
    let guesses: Vec<f32> = outputs
        .iter()
        .zip(&probes)
        .zip(&targets)
        .map(|((o, p), &t)| clamp(o.codec, decide(p, t)))
        .collect();
    let outside: Vec<usize> = (0..outputs.len())
        .filter(|&i| {
            let (lo, hi) = span(&probes[i]);
            (guesses[i] < lo - 0.5 || guesses[i] > hi + 0.5)
                && !probes[i].iter().any(|p| p.crf == guesses[i])
        })
        .collect();
    if !outside.is_empty() {
        let subset: Vec<RenditionOutput> = outside.iter().map(|&i| outputs[i].clone()).collect();
        let crfs: Vec<f32> = outside.iter().map(|&i| guesses[i]).collect();
        let mut extra = vec![Vec::new(); subset.len()];
        try_crfs(s, sample, &subset, &crfs, &mut extra, "c")?;
        for (&i, p) in outside.iter().zip(extra) {
            probes[i].extend(p);
        }
    }
    Ok(outputs
        .iter()
        .zip(probes)
        .zip(targets)
        .map(|((o, probes), target)| {
            let crf = clamp(o.codec, decide(&probes, target));
            let crf = if o.codec == VideoCodec::Av1 {
                crf.round() // SVT-AV1 takes whole values only
            } else {
                (crf * 4.0).round() / 4.0
            };
            Choice {
                crf,
                target,
                probes,
            }
        })
        .collect())
}

/// `segments` windows of `seconds`, centred at 1/6, 1/2 and 5/6 of `w` for three, at its middle
/// for one; all of `w` when it is not longer than the segments together.
fn sample_windows(w: Window, frame_rate: (i32, i32), segments: usize, seconds: f64) -> Vec<Window> {
    let ticks_per_second = f64::from(w.time_base.1) / f64::from(w.time_base.0);
    let len = (seconds * ticks_per_second).round() as i64;
    let frame = (f64::from(frame_rate.1) / f64::from(frame_rate.0).max(1.0) * ticks_per_second)
        .round() as i64;
    let n = segments.max(1) as i64;
    let total = w.end - w.start;
    if total <= n * len + frame.max(1) {
        return vec![w];
    }
    (0..n)
        .map(|k| {
            let centre = w.start + total * (2 * k + 1) / (2 * n);
            let start = (centre - len / 2).max(w.start);
            Window {
                start,
                end: (start + len).min(w.end),
                ..w
            }
        })
        .collect()
}

/// The quality of several sample segments as one: PSNR from their mean squared error, SSIM and
/// VMAF as means, each weighted by frames.
fn combine(parts: &[Quality]) -> Quality {
    let parts: Vec<&Quality> = parts.iter().filter(|q| q.frames > 0).collect();
    let frames: u64 = parts.iter().map(|q| q.frames).sum();
    if frames == 0 {
        // Nothing measured: the bottom of the scale, never a perfect score.
        return Quality {
            psnr: 0.0,
            ssim: 0.0,
            vmaf: None,
            frames: 0,
        };
    }
    let w = |q: &Quality| q.frames as f64 / frames as f64;
    let mse: f64 = parts
        .iter()
        .map(|q| w(q) * 10f64.powf(-q.psnr / 10.0))
        .sum();
    Quality {
        psnr: if mse > 0.0 {
            (-10.0 * mse.log10()).min(100.0)
        } else {
            100.0
        },
        ssim: parts.iter().map(|q| w(q) * q.ssim).sum(),
        vmaf: parts
            .iter()
            .map(|q| q.vmaf.map(|v| w(q) * v))
            .sum::<Option<f64>>(),
        frames,
    }
}

/// Encodes the sample into every output at `crfs`, measures, and adds one probe per output.
fn try_crfs(
    s: &Search,
    sample: &[Window],
    outputs: &[RenditionOutput],
    crfs: &[f32],
    probes: &mut [Vec<Probe>],
    round: &str,
) -> Result<(), MediaError> {
    let with_crfs: Vec<RenditionOutput> = outputs
        .iter()
        .zip(crfs)
        .map(|(o, &crf)| RenditionOutput {
            crf: Some(crf),
            ..o.clone()
        })
        .collect();
    let (quality, bitrates) = encode_sample(s, sample, s.tier, &with_crfs, round)?;
    for (((p, q), &crf), bitrate) in probes.iter_mut().zip(&quality).zip(crfs).zip(bitrates) {
        let score = score(s.target, q);
        if !score.is_finite() || q.frames == 0 {
            // A sample that measured nothing must not steer the search (to the lowest, most
            // expensive rate factor, say).
            return Err(MediaError::CorruptStream(format!(
                "the per-title sample at crf {crf} measured no {}",
                s.target
            )));
        }
        p.push(Probe {
            crf,
            score,
            bitrate,
        });
    }
    Ok(())
}

/// Encodes every segment of the sample into every output and measures them: per output, the
/// quality of all segments as one (`combine`) and their bits per second.
fn encode_sample(
    s: &Search,
    sample: &[Window],
    tier: Tier,
    outputs: &[RenditionOutput],
    round: &str,
) -> Result<(Vec<Quality>, Vec<u64>), MediaError> {
    let mut parts: Vec<Vec<Quality>> = vec![Vec::new(); outputs.len()];
    let mut bits = vec![0.0f64; outputs.len()];
    let mut seconds = 0.0;
    for (k, &segment) in sample.iter().enumerate() {
        let outputs: Vec<RenditionOutput> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| RenditionOutput {
                path: s.scratch.join(format!("sample-{round}-{k}-{i}.mp4")),
                ..o.clone()
            })
            .collect();
        let paths: Vec<PathBuf> = outputs.iter().map(|o| o.path.clone()).collect();
        let mut req = TranscodeRequest::new(s.input, outputs, tier);
        req.window = Some(segment);
        req.frame_rate = Some(s.frame_rate);
        req.rotation = s.rotation;
        req.audio = false;
        req.psychovisual = s.psychovisual;
        req.threads = s.threads;
        req.deadline = s.deadline;
        let result = transcode_ladder(&req).and_then(|reports| {
            let q = measure_window(
                s.input,
                Some(segment),
                s.rotation,
                &paths,
                s.vmaf
                    .filter(|_| matches!(s.target, QualityTarget::Vmaf(_))),
                s.deadline,
            )?;
            Ok((q, reports))
        });
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        let (q, reports) = result?;
        let length = (segment.end - segment.start) as f64 * f64::from(segment.time_base.0)
            / f64::from(segment.time_base.1);
        seconds += length;
        for (i, (q, r)) in q.into_iter().zip(reports).enumerate() {
            parts[i].push(q);
            bits[i] += r.bitrate as f64 * length;
        }
    }
    Ok((
        parts.iter().map(|p| combine(p)).collect(),
        bits.iter()
            .map(|b| (b / seconds.max(1e-9)).round() as u64)
            .collect(),
    ))
}

fn clamp(codec: VideoCodec, crf: f32) -> f32 {
    let (lo, hi) = codec.crf_range();
    if crf.is_nan() { lo } else { crf.clamp(lo, hi) }
}

fn span(probes: &[Probe]) -> (f32, f32) {
    probes.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
        (lo.min(p.crf), hi.max(p.crf))
    })
}

/// The two probes to interpolate between: the closest on each side of the target when it is
/// bracketed, else the two closest to it.
fn nearest_two(probes: &[Probe], target: f64) -> Vec<Probe> {
    let above = probes
        .iter()
        .filter(|p| p.score >= target)
        .min_by(|a, b| a.score.total_cmp(&b.score));
    let below = probes
        .iter()
        .filter(|p| p.score < target)
        .max_by(|a, b| a.score.total_cmp(&b.score));
    if let (Some(a), Some(b)) = (above, below) {
        return vec![*a, *b];
    }
    let mut sorted = probes.to_vec();
    sorted.sort_by(|a, b| {
        (a.score - target)
            .abs()
            .total_cmp(&(b.score - target).abs())
    });
    sorted.truncate(2);
    sorted
}

/// The rate factor to use: where the line through the two probes nearest the target meets it
/// (quality falls about linearly with the rate factor, in dB). When the probes do not show
/// quality falling as the rate factor rises (a flat stretch, noise, or a rate cap that holds
/// every try down), no line is trusted: the highest rate factor that met the target, else the
/// lowest one tried.
fn decide(probes: &[Probe], target: f64) -> f32 {
    if let [a, b] = nearest_two(probes, target)[..]
        && let Some(crf) = interpolate(a, b, target)
    {
        return crf;
    }
    probes
        .iter()
        .filter(|p| p.score >= target)
        .map(|p| p.crf)
        .fold(None, |m: Option<f32>, c| Some(m.map_or(c, |m| m.max(c))))
        .or_else(|| probes.iter().map(|p| p.crf).reduce(f32::min))
        .unwrap_or(f32::NAN)
}

/// Where the line through `a` and `b` reaches `target`, if quality falls along it.
fn interpolate(a: Probe, b: Probe, target: f64) -> Option<f32> {
    if a.crf == b.crf {
        return None;
    }
    let slope = (b.score - a.score) / f64::from(b.crf - a.crf);
    (slope < -1e-3).then(|| (f64::from(a.crf) + (target - a.score) / slope) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(crf: f32, score: f64) -> Probe {
        Probe {
            crf,
            score,
            bitrate: 0,
        }
    }

    #[test]
    fn the_line_through_two_tries_meets_the_target() {
        let p = [probe(21.0, 42.0), probe(27.0, 39.0)];
        assert!((decide(&p, 40.0) - 25.0).abs() < 1e-4);
        // Outside the span: extrapolated, then clamped by the caller.
        assert!((decide(&p, 44.0) - 17.0).abs() < 1e-4);
        assert_eq!(decide(&[probe(21.0, 42.0)], 40.0), 21.0);
        assert_eq!(clamp(VideoCodec::H264, 80.0), 38.0);
        // Quality not falling with the rate factor (noise, a rate cap): no line is trusted.
        let flat = [probe(21.0, 40.0), probe(15.0, 39.99)];
        assert_eq!(decide(&flat, 41.0), 15.0, "unreachable: the lowest tried");
        assert_eq!(decide(&flat, 39.0), 21.0, "met by both: the highest");
    }

    #[test]
    fn the_bracketing_tries_are_preferred() {
        let p = [probe(21.0, 42.0), probe(27.0, 39.0), probe(25.0, 40.2)];
        let two = nearest_two(&p, 40.0);
        assert_eq!(
            two.iter().map(|p| p.crf).collect::<Vec<_>>(),
            vec![25.0, 27.0]
        );
        let w = Window {
            start: 0,
            end: 10 * 90_000,
            time_base: (1, 90_000),
        };
        // Three seconds, centred at 1/6, 1/2 and 5/6 of the slice.
        let s = sample_windows(w, (30, 1), 3, 1.0);
        let bounds: Vec<(i64, i64)> = s.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(
            bounds,
            [(105_000, 195_000), (405_000, 495_000), (705_000, 795_000)]
        );
        let short = Window {
            end: 3 * 90_000,
            ..w
        };
        assert_eq!(sample_windows(short, (30, 1), 3, 1.0), [short]);
        // The default: the middle 2 s.
        let s = sample_windows(w, (30, 1), SAMPLE_SEGMENTS, SEGMENT_SECONDS);
        assert_eq!(
            s.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            [(4 * 90_000, 6 * 90_000)]
        );
    }

    #[test]
    fn segments_combine_by_frames_and_squared_error() {
        let q = |psnr, ssim, frames| Quality {
            psnr,
            ssim,
            vmaf: Some(ssim * 100.0),
            frames,
        };
        // 30 dB is ten times the squared error of 40 dB: the mean error of equal parts is
        // 5.5 times 40 dB's, 32.6 dB, far below the mean of the two PSNRs.
        let c = combine(&[q(40.0, 0.9, 30), q(30.0, 0.7, 30)]);
        assert!(
            (c.psnr - (40.0 - 10.0 * 5.5f64.log10())).abs() < 1e-9,
            "{c:?}"
        );
        assert!((c.ssim - 0.8).abs() < 1e-12);
        assert!((c.vmaf.unwrap() - 80.0).abs() < 1e-9);
        assert_eq!(c.frames, 60);
        let c = combine(&[q(40.0, 0.9, 90), q(30.0, 0.7, 30)]);
        assert!((c.ssim - 0.85).abs() < 1e-12);
    }
}
