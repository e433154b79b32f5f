//! `vtx bench extreme`: HEVC and AV1 against the high tier (BD-rate), and the fast tier
//! beside extreme encodes.

use super::bd_rate::bd_saving;
use super::titled::{Encoding, Measured};
use super::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use vtx_domain::plan_ladder;
use vtx_media::{
    Deadline, Limits, RenditionOutput, Tier, TranscodeRequest, VideoCodec, probe, transcode_ladder,
};

/// `vtx bench extreme`: what the extreme tier saves against the high tier at equal quality.
/// Each clip's top rung is encoded at four quality settings per codec (H.264 at the high
/// tier's preset, HEVC and AV1 at the extreme tier's, all with the tiers' default settings),
/// measured against the source (PSNR, SSIM, and VMAF where the tool is built), and the
/// rate-quality curves compared (Bjøntegaard delta rate).
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
        "| clip | rung | codec | points: crf kbps PSNR SSIM VMAF | saving at equal PSNR | at equal SSIM | at equal VMAF | CPU s, 4 points (x anchor) | extra CPU s per MB saved |"
    );
    println!("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let mut per_title_rows = Vec::new();
    let vmaf = vmaf_tool();
    for input in &inputs {
        let input = &first_seconds(input, seconds, scratch.path())?;
        let video = probe(input, &Limits::default(), Deadline::none())?.video;
        let rung = plan_ladder(video.display_width, video.display_height)
            .pop()
            .context("no rung")?;
        let name = input
            .file_name()
            .map_or("clip".into(), |n| n.to_string_lossy().into_owned());
        let e = Encoding {
            input,
            video: &video,
            rung: &rung,
            psychovisual: false,
            threads: None,
            vmaf: vmaf.as_deref(),
            dir: scratch.path(),
        };
        let mut curves: Vec<(VideoCodec, Vec<(f32, Measured)>)> = Vec::new();
        for (codec, tier, crfs) in [
            (VideoCodec::H264, Tier::High, [17.0, 21.0, 25.0, 29.0]),
            (VideoCodec::Hevc, Tier::Extreme, [20.0, 24.0, 28.0, 32.0]),
            (VideoCodec::Av1, Tier::Extreme, [24.0, 30.0, 36.0, 42.0]),
        ] {
            let mut points = Vec::new();
            for crf in crfs {
                let req = e.request(
                    codec,
                    tier,
                    Some(crf),
                    &format!("{}-{crf}.mp4", codec.label()),
                );
                points.push((crf, e.run(&req)?));
            }
            curves.push((codec, points));
        }
        per_title_rows.push(per_title_row(&e, &name)?);
        let anchor = curves[0].1.clone();
        for (codec, points) in &curves {
            let on = |c: &[(f32, Measured)], q: fn(&Measured) -> Option<f64>| {
                c.iter()
                    .map(|(_, m)| Some((m.rate, q(m)?)))
                    .collect::<Option<Vec<_>>>()
            };
            let metrics: [fn(&Measured) -> Option<f64>; 3] =
                [|m| Some(m.psnr), |m| Some(m.ssim), |m| m.vmaf];
            let mut cells: Vec<String> = metrics
                .iter()
                .map(|&q| {
                    if *codec == VideoCodec::H264 {
                        return "anchor".to_string();
                    }
                    let saving = || bd_saving(&on(&anchor, q)?, &on(points, q)?);
                    saving().map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0))
                })
                .collect();
            // Encode time per saved byte: the extra CPU of one encode of the clip, over the
            // bytes one encode saves (the anchor's mean rate times the BD saving, at equal
            // VMAF where measured, else PSNR).
            let cpu = |c: &[(f32, Measured)]| c.iter().map(|(_, m)| m.cpu).sum::<f64>();
            let (cpu_test, cpu_anchor) = (cpu(points), cpu(&anchor));
            let per_mb = if *codec == VideoCodec::H264 {
                "-".to_string()
            } else {
                let metric: fn(&Measured) -> Option<f64> = if anchor[0].1.vmaf.is_some() {
                    |m| m.vmaf
                } else {
                    |m| Some(m.psnr)
                };
                let saving = on(&anchor, metric)
                    .zip(on(points, metric))
                    .and_then(|(a, t)| bd_saving(&a, &t))
                    .filter(|s| *s > 0.0);
                let mean_rate = anchor.iter().map(|(_, m)| m.rate).sum::<f64>() / 4.0;
                match saving {
                    Some(s) => format!(
                        "{:.1}",
                        (cpu_test - cpu_anchor)
                            / 4.0
                            / (s * mean_rate * video.duration_seconds / 8.0 / 1e6)
                    ),
                    None => "no saving".into(),
                }
            };
            cells.push(format!("{cpu_test:.1} ({:.1}x)", cpu_test / cpu_anchor));
            cells.push(per_mb);
            println!(
                "| {name} | {} | {} | {} | {} |",
                rung.name,
                codec.label(),
                points
                    .iter()
                    .map(|(crf, m)| format!(
                        "{crf}: {:.0} {:.2} {:.4} {}",
                        m.rate / 1000.0,
                        m.psnr,
                        m.ssim,
                        m.vmaf.map_or("-".into(), |v| format!("{v:.2}"))
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                cells.join(" | ")
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
fn per_title_row(e: &Encoding, name: &str) -> anyhow::Result<String> {
    let mut cells = Vec::new();
    let mut target = 0.0;
    let mut anchor = 0.0;
    for (tier, codec) in [
        (Tier::High, VideoCodec::H264),
        (Tier::Extreme, VideoCodec::Hevc),
        (Tier::Extreme, VideoCodec::Av1),
    ] {
        let t = e.per_title(codec, tier, vtx_domain::QualityTarget::FastTier)?;
        target = t.target;
        let cell = format!("{} {:.0} {:.2}", t.crf, t.m.rate / 1000.0, t.m.psnr);
        if codec == VideoCodec::H264 {
            anchor = t.m.rate;
            cells.push(cell);
        } else {
            cells.push(format!("{cell}, {:.1}%", (1.0 - t.m.rate / anchor) * 100.0));
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
