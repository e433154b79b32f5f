//! `vtx bench quality`: the high tier against the fast tier (BD-rate and operating points), and
//! per-title rate factors against fixed ones at equal quality.

use std::path::{Path, PathBuf};

use anyhow::Context;
use vtx_domain::{QualityTarget, Rung, plan_ladder};
use vtx_media::{Deadline, Limits, Tier, VideoCodec, VideoInfo, probe};

use super::bd_rate::bd_saving;
use super::titled::{Encoding, Measured, Titled};
use super::*;

const CRFS: [f32; 5] = [17.0, 20.0, 23.0, 26.0, 29.0];

/// One encode of a curve.
#[derive(Clone, Copy)]
struct Point {
    crf: f32,
    m: Measured,
}

struct Clip {
    name: String,
    path: PathBuf,
    video: VideoInfo,
    rung: Rung,
}

impl Clip {
    fn encoding<'a>(
        &'a self,
        psychovisual: bool,
        vmaf: Option<&'a Path>,
        dir: &'a Path,
    ) -> Encoding<'a> {
        Encoding {
            input: &self.path,
            video: &self.video,
            rung: &self.rung,
            psychovisual,
            threads: None,
            vmaf,
            dir,
        }
    }
}

fn encode(e: &Encoding, tier: Tier, crf: Option<f32>) -> anyhow::Result<Point> {
    let name = format!("{tier:?}-{crf:?}-{}.mp4", e.psychovisual);
    let m = e.run(&e.request(VideoCodec::H264, tier, crf, &name))?;
    Ok(Point {
        crf: crf.unwrap_or(VideoCodec::H264.default_crf(tier)),
        m,
    })
}

/// ln(bits/s) at rate factor `crf` on a curve (linear between the measured points).
fn rate_at(curve: &[Point], crf: f32) -> f64 {
    let i = curve
        .partition_point(|p| p.crf < crf)
        .clamp(1, curve.len() - 1);
    let (a, b) = (curve[i - 1], curve[i]);
    let t = f64::from((crf - a.crf) / (b.crf - a.crf));
    (a.m.rate.ln() + t * (b.m.rate.ln() - a.m.rate.ln())).exp()
}

/// CPU seconds of an encode at `crf` on a curve (the nearest point's).
fn rate_cpu(curve: &[Point], crf: f32) -> f64 {
    curve
        .iter()
        .min_by(|a, b| (a.crf - crf).abs().total_cmp(&(b.crf - crf).abs()))
        .map_or(0.0, |p| p.m.cpu)
}

/// The rate factor where a curve's PSNR reaches `target` (linear between the points).
fn crf_for(curve: &[Point], target: f64) -> f32 {
    for w in curve.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (a.m.psnr >= target) && (b.m.psnr <= target) {
            let t = (a.m.psnr - target) / (a.m.psnr - b.m.psnr).max(1e-9);
            return a.crf + t as f32 * (b.crf - a.crf);
        }
    }
    if curve[0].m.psnr < target {
        curve[0].crf
    } else {
        curve[curve.len() - 1].crf
    }
}

/// BD-rate savings of `test` against `anchor` at equal PSNR, SSIM and VMAF.
fn savings(anchor: &[Point], test: &[Point]) -> String {
    let on = |c: &[Point], q: fn(&Measured) -> Option<f64>| -> Option<Vec<(f64, f64)>> {
        c.iter().map(|p| Some((p.m.rate, q(&p.m)?))).collect()
    };
    let metrics: [fn(&Measured) -> Option<f64>; 3] =
        [|m| Some(m.psnr), |m| Some(m.ssim), |m| m.vmaf];
    metrics
        .iter()
        .map(|&q| {
            let saving = || bd_saving(&on(anchor, q)?, &on(test, q)?);
            saving().map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0))
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

fn vmaf_cell(m: &Measured) -> String {
    m.vmaf.map_or("-".into(), |v| format!("{v:.2}"))
}

pub fn quality(inputs: Vec<PathBuf>, seconds: f64, target_psnr: f64) -> anyhow::Result<()> {
    vtx_media::init();
    let inputs = if inputs.is_empty() {
        [
            "bigbuckbunny.mp4",
            "bikes.mp4",
            "carphone_pristine.mp4",
            "bottle-detection.mp4",
            "one-by-one-person-detection.mp4",
        ]
        .iter()
        .map(|c| shared_clip(c))
        .collect()
    } else {
        inputs
    };
    let vmaf = vmaf_tool();
    let vmaf = vmaf.as_deref();
    let scratch = tempfile::tempdir()?;
    let mut clips = Vec::new();
    for input in inputs {
        let name = input
            .file_stem()
            .map_or("clip".into(), |n| n.to_string_lossy().into_owned());
        let path = first_seconds(&input, seconds, scratch.path())?;
        let video = probe(&path, &Limits::default(), Deadline::none())?.video;
        let rung = plan_ladder(video.display_width, video.display_height)
            .pop()
            .context("no rung")?;
        clips.push(Clip {
            name,
            path,
            video,
            rung,
        });
    }
    let dir = scratch.path();

    println!("### The high tier (x264 slow) against the fast tier (x264 veryfast)");
    println!();
    println!(
        "Points: crf kbps PSNR SSIM VMAF. Savings: BD-rate against the fast tier at equal PSNR / SSIM / VMAF."
    );
    println!();
    println!(
        "| clip | rung | fast | high (psychovisual off, the default) | high, psychovisual on | saving, psy off | saving, psy on |"
    );
    println!("| --- | --- | --- | --- | --- | ---: | ---: |");
    let mut curves = Vec::new();
    for clip in &clips {
        let (off, on) = (
            clip.encoding(false, vmaf, dir),
            clip.encoding(true, vmaf, dir),
        );
        let (mut fast, mut high, mut psy) = (Vec::new(), Vec::new(), Vec::new());
        for crf in CRFS {
            fast.push(encode(&off, Tier::Fast, Some(crf))?);
            high.push(encode(&off, Tier::High, Some(crf))?);
            psy.push(encode(&on, Tier::High, Some(crf))?);
        }
        let pts = |c: &[Point]| {
            c.iter()
                .map(|p| {
                    format!(
                        "{}: {:.0} {:.2} {:.4} {}",
                        p.crf,
                        p.m.rate / 1000.0,
                        p.m.psnr,
                        p.m.ssim,
                        vmaf_cell(&p.m)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            clip.name,
            clip.rung.name,
            pts(&fast),
            pts(&high),
            pts(&psy),
            savings(&fast, &high),
            savings(&fast, &psy),
        );
        curves.push((fast, high));
    }

    println!();
    println!("### Operating points (kbps PSNR VMAF)");
    println!();
    println!(
        "| clip | fast (crf 23) | high, quality first (`VTX_QUALITY_TARGET=off`, `VTX_PSYCHOVISUAL=true`): crf 21 | high, default (per-title `fast`, psychovisual off): crf | per-title against fast: bits | CPU s: fast / quality first / default |"
    );
    println!("| --- | --- | --- | --- | ---: | --- |");
    for (clip, (fast, _)) in clips.iter().zip(&curves) {
        let f = fast[2].m;
        let first = encode(&clip.encoding(true, vmaf, dir), Tier::High, None)?.m;
        let pt = clip.encoding(false, vmaf, dir).per_title(
            VideoCodec::H264,
            Tier::High,
            QualityTarget::FastTier,
        )?;
        let cell = |m: &Measured| format!("{:.0} {:.2} {}", m.rate / 1000.0, m.psnr, vmaf_cell(m));
        println!(
            "| {} | {} | {} | {:.2}: {} | {:+.1}% | {:.1} / {:.1} / {:.1} |",
            clip.name,
            cell(&f),
            cell(&first),
            pt.crf,
            cell(&pt.m),
            (pt.m.rate / f.rate - 1.0) * 100.0,
            f.cpu,
            first.cpu,
            pt.m.cpu
        );
    }

    println!();
    println!(
        "### Per-title against one fixed rate factor, high tier, target {target_psnr} dB PSNR"
    );
    println!();
    println!(
        "| clip | per-title: crf kbps PSNR | fixed crf that reaches the target on every clip: kbps | fixed crf with the same mean PSNR: kbps | CPU s: per-title / fixed |"
    );
    println!("| --- | --- | ---: | ---: | --- |");
    let mut titled: Vec<Titled> = Vec::new();
    for clip in &clips {
        titled.push(clip.encoding(false, vmaf, dir).per_title(
            VideoCodec::H264,
            Tier::High,
            QualityTarget::Psnr(target_psnr),
        )?);
    }
    // Equal quality, first framing: the one rate factor that brings every clip to the target.
    let worst = curves
        .iter()
        .map(|(_, high)| crf_for(high, target_psnr))
        .fold(f32::MAX, f32::min);
    // Second framing: the one rate factor whose mean PSNR over the clips is per-title's mean.
    let mean_psnr = titled.iter().map(|p| p.m.psnr).sum::<f64>() / titled.len() as f64;
    let mean_at = |crf: f32| {
        curves
            .iter()
            .map(|(_, high)| {
                let i = high
                    .partition_point(|p| p.crf < crf)
                    .clamp(1, high.len() - 1);
                let (a, b) = (high[i - 1], high[i]);
                a.m.psnr + f64::from((crf - a.crf) / (b.crf - a.crf)) * (b.m.psnr - a.m.psnr)
            })
            .sum::<f64>()
            / curves.len() as f64
    };
    let mut same_mean = CRFS[0];
    while same_mean < CRFS[CRFS.len() - 1] && mean_at(same_mean + 0.05) >= mean_psnr {
        same_mean += 0.05;
    }
    let (mut total_pt, mut total_worst, mut total_mean) = (0.0, 0.0, 0.0);
    for ((clip, (_, high)), pt) in clips.iter().zip(&curves).zip(&titled) {
        let (w, m) = (rate_at(high, worst), rate_at(high, same_mean));
        total_pt += pt.m.rate;
        total_worst += w;
        total_mean += m;
        println!(
            "| {} | {:.2} {:.0} {:.2} | {:.0} | {:.0} | {:.1} / {:.1} |",
            clip.name,
            pt.crf,
            pt.m.rate / 1000.0,
            pt.m.psnr,
            w / 1000.0,
            m / 1000.0,
            pt.m.cpu,
            rate_cpu(high, worst)
        );
    }
    println!(
        "| all (bits/s summed) | {:.0} (mean PSNR {mean_psnr:.2}) | {:.0} at crf {worst:.2}: per-title saves {:.1}% | {:.0} at crf {same_mean:.2}: per-title saves {:.1}% | |",
        total_pt / 1000.0,
        total_worst / 1000.0,
        (1.0 - total_pt / total_worst) * 100.0,
        total_mean / 1000.0,
        (1.0 - total_pt / total_mean) * 100.0,
    );
    Ok(())
}
