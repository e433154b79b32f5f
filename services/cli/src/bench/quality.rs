//! `vtx bench quality`: the high tier against the fast tier (BD-rate and operating points), and
//! per-title rate factors against fixed ones at equal quality.

use std::path::{Path, PathBuf};

use anyhow::Context;
use vtx_domain::{QualityTarget, Rung, plan_ladder};
use vtx_media::per_title::{Search, choose_crfs};
use vtx_media::{
    Deadline, Limits, RenditionOutput, Tier, TranscodeRequest, VideoCodec, Window, probe,
    transcode_ladder,
};

use super::bd_rate::bd_saving;
use super::*;

const CRFS: [f32; 5] = [17.0, 20.0, 23.0, 26.0, 29.0];

/// One encode: bits/s, PSNR, SSIM, CPU seconds.
#[derive(Clone, Copy)]
struct Point {
    crf: f32,
    rate: f64,
    psnr: f64,
    ssim: f64,
    cpu: f64,
}

struct Clip {
    name: String,
    path: PathBuf,
    rung: Rung,
    window: Window,
    frame_rate: (i32, i32),
    rotation: u32,
}

fn encode(clip: &Clip, tier: Tier, crf: Option<f32>, dir: &Path) -> anyhow::Result<Point> {
    let path = dir.join(format!("{}-{tier:?}-{crf:?}.mp4", clip.name));
    let mut req = TranscodeRequest::new(
        &clip.path,
        vec![RenditionOutput {
            rung: clip.rung.clone(),
            codec: VideoCodec::H264,
            path: path.clone(),
            crf,
        }],
        tier,
    );
    req.audio = false;
    req.rotation = clip.rotation;
    req.threads = Some(1);
    let (cost, report) = measure_cost(|| Ok(transcode_ladder(&req)?))?;
    let q = vtx_media::measure(
        &clip.path,
        clip.rotation,
        std::slice::from_ref(&path),
        Deadline::none(),
    )?;
    let _ = std::fs::remove_file(&path);
    Ok(Point {
        crf: crf.unwrap_or(VideoCodec::H264.default_crf(tier)),
        rate: report[0].bitrate as f64,
        psnr: q[0].psnr,
        ssim: q[0].ssim,
        cpu: cost.cpu,
    })
}

/// Per-title on the whole clip (one slice), then the encode at the chosen rate factor; the CPU
/// cost includes the search.
fn per_title(clip: &Clip, target: QualityTarget, dir: &Path) -> anyhow::Result<Point> {
    let scratch = dir.join("per-title");
    let (search_cost, choice) = measure_cost(|| {
        Ok(choose_crfs(
            &Search {
                input: &clip.path,
                window: clip.window,
                frame_rate: clip.frame_rate,
                rotation: clip.rotation,
                tier: Tier::High,
                target,
                threads: Some(1),
                scratch: &scratch,
                deadline: Deadline::none(),
            },
            &[RenditionOutput {
                rung: clip.rung.clone(),
                codec: VideoCodec::H264,
                path: dir.join("unused"),
                crf: None,
            }],
        )?)
    })?;
    let mut p = encode(clip, Tier::High, Some(choice[0].crf), dir)?;
    p.cpu += search_cost.cpu;
    Ok(p)
}

/// ln(bits/s) at rate factor `crf` on a curve (linear between the measured points).
fn rate_at(curve: &[Point], crf: f32) -> f64 {
    let i = curve
        .partition_point(|p| p.crf < crf)
        .clamp(1, curve.len() - 1);
    let (a, b) = (curve[i - 1], curve[i]);
    let t = f64::from((crf - a.crf) / (b.crf - a.crf));
    (a.rate.ln() + t * (b.rate.ln() - a.rate.ln())).exp()
}

/// CPU seconds of an encode at `crf` on a curve (the nearest point's).
fn rate_cpu(curve: &[Point], crf: f32) -> f64 {
    curve
        .iter()
        .min_by(|a, b| (a.crf - crf).abs().total_cmp(&(b.crf - crf).abs()))
        .map_or(0.0, |p| p.cpu)
}

/// The rate factor where a curve's PSNR reaches `target` (linear between the points).
fn crf_for(curve: &[Point], target: f64) -> f32 {
    for w in curve.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (a.psnr >= target) && (b.psnr <= target) {
            let t = (a.psnr - target) / (a.psnr - b.psnr).max(1e-9);
            return a.crf + t as f32 * (b.crf - a.crf);
        }
    }
    if curve[0].psnr < target {
        curve[0].crf
    } else {
        curve[curve.len() - 1].crf
    }
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
    let scratch = tempfile::tempdir()?;
    let mut clips = Vec::new();
    for input in inputs {
        let name = input
            .file_stem()
            .map_or("clip".into(), |n| n.to_string_lossy().into_owned());
        let path = first_seconds(&input, seconds, scratch.path())?;
        let p = probe(&path, &Limits::default(), Deadline::none())?;
        let v = &p.video;
        let rung = plan_ladder(v.display_width, v.display_height)
            .pop()
            .context("no rung")?;
        clips.push(Clip {
            name,
            path,
            rung,
            window: Window {
                start: v.start_pts,
                end: v.end_pts + 1,
                time_base: v.time_base,
            },
            frame_rate: v.frame_rate_q,
            rotation: v.rotation,
        });
    }
    let dir = scratch.path();

    println!("### The high tier (x264 slow) against the fast tier (x264 veryfast)");
    println!();
    println!(
        "| clip | rung | fast: crf kbps PSNR SSIM | high: crf kbps PSNR SSIM | BD-rate at equal PSNR | at equal SSIM |"
    );
    println!("| --- | --- | --- | --- | ---: | ---: |");
    let mut curves = Vec::new();
    for clip in &clips {
        let mut fast = Vec::new();
        let mut high = Vec::new();
        for crf in CRFS {
            fast.push(encode(clip, Tier::Fast, Some(crf), dir)?);
            high.push(encode(clip, Tier::High, Some(crf), dir)?);
        }
        let psnr = |c: &[Point]| c.iter().map(|p| (p.rate, p.psnr)).collect::<Vec<_>>();
        let ssim = |c: &[Point]| c.iter().map(|p| (p.rate, p.ssim)).collect::<Vec<_>>();
        let pts = |c: &[Point]| {
            c.iter()
                .map(|p| {
                    format!(
                        "{}: {:.0} {:.2} {:.4}",
                        p.crf,
                        p.rate / 1000.0,
                        p.psnr,
                        p.ssim
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let pct = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            clip.name,
            clip.rung.name,
            pts(&fast),
            pts(&high),
            pct(bd_saving(&psnr(&fast), &psnr(&high))),
            pct(bd_saving(&ssim(&fast), &ssim(&high))),
        );
        curves.push((fast, high));
    }

    println!();
    println!("### Operating points");
    println!();
    println!(
        "| clip | fast (crf 23): kbps PSNR | high, fixed crf 21 (quality first): kbps PSNR | high, per-title `fast`: crf kbps PSNR | per-title against fast: bits | CPU s: fast / fixed high / per-title high |"
    );
    println!("| --- | --- | --- | --- | ---: | --- |");
    let mut per_title_fast = Vec::new();
    for (clip, (fast, _)) in clips.iter().zip(&curves) {
        let f = fast[2];
        // Today's fixed setting (`VTX_QUALITY_TARGET=off`): the high tier's default rate factor.
        let fixed = encode(clip, Tier::High, None, dir)?;
        let pt = per_title(clip, QualityTarget::FastTier, dir)?;
        println!(
            "| {} | {:.0} {:.2} | {:.0} {:.2} | {:.2} {:.0} {:.2} | {:+.1}% | {:.1} / {:.1} / {:.1} |",
            clip.name,
            f.rate / 1000.0,
            f.psnr,
            fixed.rate / 1000.0,
            fixed.psnr,
            pt.crf,
            pt.rate / 1000.0,
            pt.psnr,
            (pt.rate / f.rate - 1.0) * 100.0,
            f.cpu,
            fixed.cpu,
            pt.cpu
        );
        per_title_fast.push(pt);
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
    let mut titled = Vec::new();
    for clip in &clips {
        titled.push(per_title(clip, QualityTarget::Psnr(target_psnr), dir)?);
    }
    // Equal quality, first framing: the one rate factor that brings every clip to the target.
    let worst = curves
        .iter()
        .map(|(_, high)| crf_for(high, target_psnr))
        .fold(f32::MAX, f32::min);
    // Second framing: the one rate factor whose mean PSNR over the clips is per-title's mean.
    let mean_psnr = titled.iter().map(|p| p.psnr).sum::<f64>() / titled.len() as f64;
    let mean_at = |crf: f32| {
        curves
            .iter()
            .map(|(_, high)| {
                let i = high
                    .partition_point(|p| p.crf < crf)
                    .clamp(1, high.len() - 1);
                let (a, b) = (high[i - 1], high[i]);
                a.psnr + f64::from((crf - a.crf) / (b.crf - a.crf)) * (b.psnr - a.psnr)
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
        total_pt += pt.rate;
        total_worst += w;
        total_mean += m;
        let fixed_cpu = rate_cpu(high, worst);
        println!(
            "| {} | {:.2} {:.0} {:.2} | {:.0} | {:.0} | {:.1} / {:.1} |",
            clip.name,
            pt.crf,
            pt.rate / 1000.0,
            pt.psnr,
            w / 1000.0,
            m / 1000.0,
            pt.cpu,
            fixed_cpu
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
