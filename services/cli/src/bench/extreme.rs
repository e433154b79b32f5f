//! `vtx bench extreme`: HEVC and AV1 against the high tier (BD-rate), and the fast tier
//! beside extreme encodes.

use super::bd_rate::bd_saving;
use super::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use vtx_domain::plan_ladder;
use vtx_media::{
    Deadline, Limits, RenditionOutput, Tier, TranscodeRequest, VideoCodec, probe, transcode_ladder,
};

/// One encode of a rate-quality curve: (crf, bits/s, PSNR, SSIM).
type Point = (u32, f64, f64, f64);

/// `vtx bench extreme`: what the extreme tier saves against the high tier at equal quality.
/// Each clip's top rung is encoded at four quality settings per codec (H.264 at the high
/// tier's preset, HEVC and AV1 at the extreme tier's), measured against the source (PSNR and
/// SSIM), and the rate-quality curves compared (Bjøntegaard delta rate).
pub fn extreme(
    inputs: Vec<PathBuf>,
    priority_only: bool,
    seconds: f64,
    curves_only: bool,
) -> anyhow::Result<()> {
    vtx_media::init();
    let inputs = if inputs.is_empty() {
        ["bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4"]
            .iter()
            .map(|c| shared_clip(c))
            .collect()
    } else {
        inputs
    };
    let scratch = tempfile::tempdir()?;
    if priority_only {
        return fast_beside_extreme(&inputs[0], scratch.path());
    }
    println!(
        "| clip | rung | codec | points: crf kbps PSNR SSIM | saving at equal PSNR | saving at equal SSIM |"
    );
    println!("| --- | --- | --- | --- | ---: | ---: |");
    let mut per_title_rows = Vec::new();
    for input in &inputs {
        let input = &first_seconds(input, seconds, scratch.path())?;
        let p = probe(input, &Limits::default(), Deadline::none())?;
        let rung = plan_ladder(p.video.display_width, p.video.display_height)
            .pop()
            .context("no rung")?;
        let name = input
            .file_name()
            .map_or("clip".into(), |n| n.to_string_lossy().into_owned());
        let mut curves: Vec<(VideoCodec, Vec<Point>)> = Vec::new();
        for (codec, tier, crfs) in [
            (VideoCodec::H264, Tier::High, [17u32, 21, 25, 29]),
            (VideoCodec::Hevc, Tier::Extreme, [20, 24, 28, 32]),
            (VideoCodec::Av1, Tier::Extreme, [24, 30, 36, 42]),
        ] {
            let mut points = Vec::new();
            for crf in crfs {
                let path = scratch
                    .path()
                    .join(format!("{name}-{}-{crf}.mp4", codec.label()));
                let mut req = TranscodeRequest::new(
                    input,
                    vec![RenditionOutput {
                        rung: rung.clone(),
                        codec,
                        path: path.clone(),
                        crf: None,
                    }],
                    tier,
                );
                req.audio = false;
                req.crf = Some(crf);
                req.rotation = p.video.rotation;
                let report = transcode_ladder(&req)?;
                let r = report.first().context("no report")?;
                let q = vtx_media::measure(input, p.video.rotation, &[path], Deadline::none())?;
                points.push((crf, r.bitrate as f64, q[0].psnr, q[0].ssim));
            }
            curves.push((codec, points));
        }
        per_title_rows.push(per_title_row(input, &p, &rung, &name, scratch.path())?);
        let anchor = curves[0].1.clone();
        for (codec, points) in &curves {
            let psnr =
                |c: &[(u32, f64, f64, f64)]| c.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>();
            let ssim =
                |c: &[(u32, f64, f64, f64)]| c.iter().map(|p| (p.1, p.3)).collect::<Vec<_>>();
            let fmt = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0));
            let (sp, ss) = if *codec == VideoCodec::H264 {
                ("anchor".to_string(), "anchor".to_string())
            } else {
                (
                    fmt(bd_saving(&psnr(&anchor), &psnr(points))),
                    fmt(bd_saving(&ssim(&anchor), &ssim(points))),
                )
            };
            println!(
                "| {name} | {} | {} | {} | {sp} | {ss} |",
                rung.name,
                codec.label(),
                points
                    .iter()
                    .map(|(crf, kbps, psnr, ssim)| format!(
                        "{crf}: {:.0} {psnr:.2} {ssim:.4}",
                        kbps / 1000.0
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    println!();
    println!(
        "### Per-title on every codec: each reaches the fast tier's PSNR (`VTX_QUALITY_TARGET=fast`)"
    );
    println!();
    println!(
        "| clip | fast tier PSNR | H.264 high: crf kbps PSNR | HEVC: crf kbps PSNR, saving | AV1: crf kbps PSNR, saving |"
    );
    println!("| --- | ---: | --- | --- | --- |");
    for row in per_title_rows {
        println!("{row}");
    }
    if !curves_only {
        fast_beside_extreme(&inputs[0], scratch.path())?;
    }
    Ok(())
}

/// Per-title (target: the fast tier's quality) for the high tier's H.264 and the extreme
/// tier's HEVC and AV1 on the whole clip, each encoded at its chosen rate factor and measured.
fn per_title_row(
    input: &Path,
    p: &vtx_media::Probe,
    rung: &vtx_domain::Rung,
    name: &str,
    dir: &Path,
) -> anyhow::Result<String> {
    use vtx_media::per_title::{Search, choose_crfs};
    let v = &p.video;
    let window = vtx_media::Window {
        start: v.start_pts,
        end: v.end_pts + 1,
        time_base: v.time_base,
    };
    let mut cells = Vec::new();
    let mut target = 0.0;
    let mut anchor = 0.0;
    for (tier, codec) in [
        (Tier::High, VideoCodec::H264),
        (Tier::Extreme, VideoCodec::Hevc),
        (Tier::Extreme, VideoCodec::Av1),
    ] {
        let output = RenditionOutput {
            rung: rung.clone(),
            codec,
            path: dir.join(format!("{name}-pt-{}.mp4", codec.label())),
            crf: None,
        };
        let choice = choose_crfs(
            &Search {
                input,
                window,
                frame_rate: v.frame_rate_q,
                rotation: v.rotation,
                tier,
                target: vtx_domain::QualityTarget::FastTier,
                threads: None,
                scratch: &dir.join("per-title"),
                deadline: Deadline::none(),
            },
            std::slice::from_ref(&output),
        )?
        .remove(0);
        target = choice.target;
        let mut req = TranscodeRequest::new(
            input,
            vec![RenditionOutput {
                crf: Some(choice.crf),
                ..output.clone()
            }],
            tier,
        );
        req.audio = false;
        req.rotation = v.rotation;
        let rate = transcode_ladder(&req)?[0].bitrate as f64;
        let q = vtx_media::measure(
            input,
            v.rotation,
            std::slice::from_ref(&output.path),
            Deadline::none(),
        )?;
        let _ = std::fs::remove_file(&output.path);
        if codec == VideoCodec::H264 {
            anchor = rate;
            cells.push(format!(
                "{} {:.0} {:.2}",
                choice.crf,
                rate / 1000.0,
                q[0].psnr
            ));
        } else {
            cells.push(format!(
                "{} {:.0} {:.2}, {:.1}%",
                choice.crf,
                rate / 1000.0,
                q[0].psnr,
                (1.0 - rate / anchor) * 100.0
            ));
        }
    }
    Ok(format!(
        "| {name} | {target:.2} (sample) | {} |",
        cells.join(" | ")
    ))
}

/// The fast tier's ladder of `input`, timed alone, beside extreme encodes at the normal
/// priority, and beside the same at the lowest (as workers run them): does background work
/// delay what publishes videos?
fn fast_beside_extreme(input: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let p = probe(input, &Limits::default(), Deadline::none())?;
    let ladder = plan_ladder(p.video.display_width, p.video.display_height);
    let top = ladder.last().context("no rung")?.clone();
    let fast_req = {
        let outputs = ladder
            .iter()
            .map(|r| RenditionOutput {
                rung: r.clone(),
                codec: VideoCodec::H264,
                path: dir.join(format!("beside-fast-{}.mp4", r.name)),
                crf: None,
            })
            .collect();
        let mut r = TranscodeRequest::new(input, outputs, Tier::Fast);
        r.audio = false;
        r.rotation = p.video.rotation;
        r
    };
    let fast = |runs: usize| -> anyhow::Result<f64> {
        let mut t = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            transcode_ladder(&fast_req)?;
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    };
    let alone = fast(5)?;
    let mut rows = Vec::new();
    for low in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let mut req = TranscodeRequest::new(
            input,
            [VideoCodec::Hevc, VideoCodec::Av1]
                .into_iter()
                .map(|codec| RenditionOutput {
                    rung: top.clone(),
                    codec,
                    path: dir.join(format!("beside-extreme-{}.mp4", codec.label())),
                    crf: None,
                })
                .collect(),
            Tier::Extreme,
        );
        req.audio = false;
        req.rotation = p.video.rotation;
        let counter = frames.clone();
        req.progress = Some(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let bg_stop = stop.clone();
        // Back-to-back encodes, each cut off after a minute (longer than the timed runs, so
        // the encoders are set up once, as on a worker, and the load is steady meanwhile).
        let work = move || -> anyhow::Result<()> {
            while !bg_stop.load(Ordering::Relaxed) {
                req.deadline = Deadline::after(std::time::Duration::from_secs(60));
                match transcode_ladder(&req) {
                    Ok(_) | Err(vtx_media::MediaError::Timeout) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        };
        let bg = if low {
            vtx_media::spawn_low_priority("bench-extreme", work)?
        } else {
            std::thread::spawn(work)
        };
        std::thread::sleep(std::time::Duration::from_secs(5));
        let (f0, t0) = (frames.load(Ordering::Relaxed), Instant::now());
        let beside = fast(3)?;
        let extreme_fps = (frames.load(Ordering::Relaxed) - f0) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        bg.join()
            .map_err(|_| anyhow::anyhow!("the extreme encode panicked"))??;
        rows.push((low, beside, extreme_fps));
    }
    println!();
    println!(
        "### Fast tier beside extreme encodes ({}, {}-rung fast ladder, median of 5 alone, of 3 beside)",
        input
            .file_name()
            .map_or("clip".into(), |n| n.to_string_lossy()),
        ladder.len()
    );
    println!();
    println!("| fast ladder runs | wall s | vs alone | extreme frames/s meanwhile |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| alone | {alone:.2} | | |");
    for (low, beside, fps) in rows {
        println!(
            "| beside HEVC + AV1 encodes at {} | {beside:.2} | {:+.0}% | {fps:.1} |",
            if low {
                "the lowest priority (nice 19, SCHED_IDLE)"
            } else {
                "the normal priority"
            },
            (beside / alone - 1.0) * 100.0
        );
    }
    Ok(())
}
