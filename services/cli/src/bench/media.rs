//! `vtx bench media`: the media engine against itself and against the `ffmpeg` command line.

use super::*;
use std::path::{Path, PathBuf};

use vtx_domain::{Rung, plan_ladder};
use vtx_media::{
    Deadline, Limits, PipelineRequest, RenditionOutput, Tier, TranscodeRequest, VideoCodec,
    measure, probe, run_pipeline, transcode_ladder,
};

/// A 720p clip of at least 30 s: the shared Big Buck Bunny excerpt looped without re-encoding.
fn default_input(dir: &Path) -> anyhow::Result<PathBuf> {
    looped_bbb(dir, 6) // 31.7 s
}

/// The ffmpeg command line's equivalent of our fast-tier x264 settings for one rung.
fn cli_x264_args(rung: &Rung, gop: u32, threads: Option<usize>) -> Vec<String> {
    let mut a: Vec<String> = [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-crf",
        "23",
        "-bf",
        "2",
        "-pix_fmt",
        "yuv420p",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "-maxrate".into(),
        rung.max_bitrate.to_string(),
        "-bufsize".into(),
        (rung.max_bitrate * 2).to_string(),
        "-x264-params".into(),
        format!("keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"),
        "-an".into(),
    ]);
    if let Some(t) = threads {
        a.extend(["-threads".into(), t.to_string()]);
    }
    a
}

pub fn media(input: Option<PathBuf>, jobs: usize) -> anyhow::Result<()> {
    vtx_media::init();
    let scratch = tempfile::tempdir()?;
    let input = match input {
        Some(p) => p,
        None => default_input(scratch.path())?,
    };
    let p = probe(&input, &Limits::default(), Deadline::none())?;
    let ladder: Vec<Rung> = plan_ladder(p.video.display_width, p.video.display_height)
        .into_iter()
        .rev()
        .take(4)
        .rev()
        .collect();
    let gop = (2.0 * p.video.frame_rate).round() as u32;
    let fps = p.video.frame_rate;
    println!(
        "input: {} ({}x{}, {:.1} s, {} frames, {} fps), {} cores",
        input.display(),
        p.video.width,
        p.video.height,
        p.video.duration_seconds,
        p.video.frames,
        fps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = scratch.path();
    let outputs = |tag: &str, rungs: &[Rung]| -> Vec<RenditionOutput> {
        rungs
            .iter()
            .map(|r| RenditionOutput {
                rung: r.clone(),
                codec: VideoCodec::H264,
                path: dir.join(format!("{tag}-{}.mp4", r.name)),
                crf: None,
            })
            .collect()
    };
    let ladder_req = |tag: &str, rungs: &[Rung]| {
        let mut r = TranscodeRequest::new(&input, outputs(tag, rungs), Tier::Fast);
        r.audio = false;
        r
    };

    // (a) one decode feeding the ladder vs one decode per rung.
    let (shared, _) = measure_cost(|| Ok(transcode_ladder(&ladder_req("shared", &ladder))?))?;
    let (separate, _) = measure_cost(|| {
        for r in &ladder {
            transcode_ladder(&ladder_req("separate", std::slice::from_ref(r)))?;
        }
        Ok(())
    })?;

    // (b) the same ladder on the ffmpeg command line: one decode, split, scale, encode.
    let mut graph = format!("[0:v]split={}", ladder.len());
    for i in 0..ladder.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.iter().enumerate() {
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic[o{i}]",
            r.width, r.height
        ));
    }
    let mut args: Vec<String> = vec![
        "-i".into(),
        input.to_string_lossy().into_owned(),
        "-filter_complex".into(),
        graph,
    ];
    for (i, r) in ladder.iter().enumerate() {
        args.extend(["-map".into(), format!("[o{i}]")]);
        args.extend(cli_x264_args(r, gop, None));
        args.push(
            dir.join(format!("cli-{}.mp4", r.name))
                .to_string_lossy()
                .into_owned(),
        );
    }
    let (cli, _) = measure_cost(|| ffmpeg(&args))?;

    // (c) slices on P single-threaded workers vs one single-threaded monolithic encode.
    let sliced_dir = dir.join("sliced");
    let mono_dir = dir.join("mono");
    let pipeline = |out: &Path, slice_seconds: f64, jobs: usize| {
        let mut r = PipelineRequest::new(&input, out);
        r.slice_seconds = slice_seconds;
        r.jobs = jobs;
        r.threads = Some(1);
        r.quality = false;
        r.hls = false;
        r
    };
    // Three slices per worker, so that uneven slice lengths even out across rounds.
    let slice_seconds = (p.video.duration_seconds / (jobs as f64 * 3.0)).max(1.0);
    let (sliced, sm) =
        measure_cost(|| Ok(run_pipeline(&pipeline(&sliced_dir, slice_seconds, jobs))?))?;
    let (mono, mm) = measure_cost(|| Ok(run_pipeline(&pipeline(&mono_dir, 0.0, 1))?))?;
    let top =
        |m: &vtx_media::Manifest, d: &Path| d.join(&m.renditions.last().expect("a rung").file);
    let q = measure(
        &input,
        p.video.rotation,
        &[top(&sm, &sliced_dir), top(&mm, &mono_dir)],
        Deadline::none(),
    )?;

    let frames = p.video.frames as f64;
    println!();
    println!("| run | wall s | CPU s | fps | vs baseline |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let row = |name: &str, c: Cost, note: String| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} | {note} |",
            c.wall,
            c.cpu,
            frames / c.wall
        );
    };
    row(
        &format!("(a) vtx: one decode -> {}-rung ladder", ladder.len()),
        shared,
        format!(
            "{:.1}% less wall, {:.1}% less CPU than (a) separate",
            (1.0 - shared.wall / separate.wall) * 100.0,
            (1.0 - shared.cpu / separate.cpu) * 100.0
        ),
    );
    row(
        &format!("(a) vtx: {} separate decode+encode runs", ladder.len()),
        separate,
        "baseline".into(),
    );
    row(
        "(b) ffmpeg CLI: -filter_complex split, same x264 settings",
        cli,
        format!(
            "vtx ladder takes {:+.1}% wall vs the CLI",
            (shared.wall / cli.wall - 1.0) * 100.0
        ),
    );
    row(
        &format!(
            "(c) vtx: {} slices on {jobs} single-threaded workers",
            sm.slices
        ),
        sliced,
        format!(
            "speed-up {:.2}x (target >= {:.2}x), top rung PSNR {:.3} dB",
            mono.wall / sliced.wall,
            0.9 * jobs as f64,
            q[0].psnr
        ),
    );
    row(
        "(c) vtx: monolithic, one single-threaded worker",
        mono,
        format!(
            "top rung PSNR {:.3} dB; stitched: {:+.3} dB at {:+.1}% bytes",
            q[1].psnr,
            q[0].psnr - q[1].psnr,
            (sm.renditions.last().expect("a rung").bytes as f64
                / mm.renditions.last().expect("a rung").bytes as f64
                - 1.0)
                * 100.0
        ),
    );
    Ok(())
}
