//! Objective quality (FFmpeg's psnr and ssim filters) and per-title rate factors.

use std::path::{Path, PathBuf};
use std::process::Command;

use vtx_domain::{QualityTarget, Rung};
use vtx_media::per_title::{Search, choose_crfs};
use vtx_media::{
    Deadline, Limits, RenditionOutput, Tier, TranscodeRequest, VideoCodec, Window, measure, probe,
    transcode_ladder,
};
use vtx_testkit::{derived, media};

/// The `ffmpeg` command line's PSNR and SSIM of the luma plane ("PSNR y", "SSIM Y") of `dist`
/// against `reference` scaled to its size, both in `format`, as the usual command measures them.
fn cli_quality(dist: &Path, reference: &Path, width: u32, height: u32, format: &str) -> (f64, f64) {
    let graph = format!(
        "[0:v]format={format},split[d1][d2];\
         [1:v]scale={width}:{height}:flags=bicubic,format={format},split[r1][r2];\
         [d1][r1]psnr;[d2][r2]ssim"
    );
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(dist)
        .arg("-i")
        .arg(reference)
        .args(["-lavfi", &graph, "-f", "null", "-"])
        .output()
        .expect("ffmpeg command line is installed by deploy/local/setup.sh");
    let log = String::from_utf8_lossy(&out.stderr);
    let after = |key: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{log}"));
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (after("PSNR y:"), after("SSIM Y:"))
}

fn encode(input: &Path, out: &Path, rung: &Rung, tier: Tier, crf: Option<f32>) -> u64 {
    encode_with(input, out, rung, VideoCodec::H264, tier, crf)
}

fn encode_with(
    input: &Path,
    out: &Path,
    rung: &Rung,
    codec: VideoCodec,
    tier: Tier,
    crf: Option<f32>,
) -> u64 {
    let mut req = TranscodeRequest::new(
        input,
        vec![RenditionOutput {
            rung: rung.clone(),
            codec,
            path: out.to_path_buf(),
            crf,
        }],
        tier,
    );
    req.audio = false;
    transcode_ladder(&req).unwrap()[0].bitrate
}

fn rung(width: u32, height: u32) -> Rung {
    Rung {
        name: format!("{height}p"),
        width,
        height,
        max_bitrate: 20_000_000,
        capped_by_source: false,
    }
}

/// Our PSNR within 0.01 dB and SSIM within 1e-4 of the command line's.
fn assert_matches_cli(ours: &vtx_media::Quality, (psnr, ssim): (f64, f64)) {
    assert!(
        (ours.psnr - psnr).abs() < 0.01,
        "{} vs the CLI's {psnr}",
        ours.psnr
    );
    assert!(
        (ours.ssim - ssim).abs() < 1e-4,
        "{} vs the CLI's {ssim}",
        ours.ssim
    );
}

#[test]
fn quality_is_what_the_ffmpeg_command_line_measures() {
    // A downscaled, coarse encode of a real clip: the reference is scaled to its size.
    let src = media("bikes.mp4");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.mp4");
    let r = rung(320, 136);
    encode(&src, &out, &r, Tier::Fast, Some(32.0));
    let ours = measure(&src, 0, std::slice::from_ref(&out), Deadline::none()).unwrap()[0];
    let (psnr, ssim) = cli_quality(&out, &src, r.width, r.height, "yuv420p");
    assert_eq!(ours.frames, 250);
    assert_matches_cli(&ours, (psnr, ssim));
    // A 10-bit output (the extreme tier's HEVC) is compared at 10 bits, undithered.
    let deep = dir.path().join("small-10bit.mp4");
    encode_with(&src, &deep, &r, VideoCodec::Hevc, Tier::Extreme, Some(30.0));
    let ours = measure(&src, 0, std::slice::from_ref(&deep), Deadline::none()).unwrap()[0];
    let (psnr, ssim) = cli_quality(&deep, &src, r.width, r.height, "yuv420p10le");
    assert_matches_cli(&ours, (psnr, ssim));
    let (_, dithered) = cli_quality(&deep, &src, r.width, r.height, "yuv420p");
    assert!(
        ours.ssim > dithered,
        "{} vs {dithered} at 8 bits",
        ours.ssim
    );
    // Identical frames: the top of the scale.
    let same = measure(&src, 0, std::slice::from_ref(&src), Deadline::none()).unwrap()[0];
    assert_eq!((same.psnr, same.ssim), (100.0, 1.0));
}

/// `bikes.mp4` made easy (blurred, still) or hard (film grain).
fn content(name: &str, filter: &str) -> PathBuf {
    derived(
        name,
        &[
            "-i",
            media("bikes.mp4").to_str().unwrap(),
            "-vf",
            filter,
            "-c:v",
            "libx264",
            "-crf",
            "8",
            "-preset",
            "veryfast",
            "-an",
        ],
    )
}

#[test]
fn per_title_gives_hard_content_a_lower_rate_factor_and_reaches_the_target() {
    let easy = content("per-title-easy.mp4", "gblur=sigma=2");
    let hard = content("per-title-hard.mp4", "noise=alls=18:allf=t+u");
    let target = 38.0;
    let r = rung(640, 272);
    let mut chosen = Vec::new();
    for input in [&easy, &hard] {
        let p = probe(input, &Limits::default(), Deadline::none()).unwrap();
        let v = &p.video;
        let dir = tempfile::tempdir().unwrap();
        let search = Search {
            input,
            window: Window::whole(v),
            frame_rate: v.frame_rate_q,
            rotation: 0,
            tier: Tier::High,
            target: QualityTarget::Psnr(target),
            psychovisual: false,
            vmaf: None,
            threads: None,
            scratch: &dir.path().join("scratch"),
            deadline: Deadline::none(),
        };
        let output = RenditionOutput {
            rung: r.clone(),
            codec: VideoCodec::H264,
            path: dir.path().join("unused.mp4"),
            crf: None,
        };
        let choice = choose_crfs(&search, &[output]).unwrap().remove(0);
        assert!(choice.probes.len() >= 2, "{choice:?}");
        assert!(
            !dir.path().join("scratch").read_dir().unwrap().any(|_| true),
            "sample encodes left behind"
        );
        // The whole clip at the chosen rate factor lands on the target.
        let out = dir.path().join("full.mp4");
        encode(input, &out, &r, Tier::High, Some(choice.crf));
        let q = measure(input, 0, &[out], Deadline::none()).unwrap()[0];
        assert!(
            (q.psnr - target).abs() < 1.0,
            "{}: crf {} gave {} dB for a {target} dB target ({choice:?})",
            input.display(),
            choice.crf,
            q.psnr
        );
        chosen.push(choice.crf);
    }
    assert!(
        chosen[1] + 4.0 < chosen[0],
        "hard content needs a lower rate factor: easy {} hard {}",
        chosen[0],
        chosen[1]
    );
}

/// The `vmaf` tool deploy/local/setup.sh builds.
fn vmaf_tool() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.vtx/vmaf/bin/vmaf");
    vtx_media::vmaf_tool(&path).expect("deploy/local/setup.sh builds the vmaf tool")
}

/// The `vmaf` tool's score of `dist` scaled up (bicubic) to the reference's `width` x `height`,
/// both decoded by the `ffmpeg` command line at 10 bits, as Netflix's guides run it.
fn cli_vmaf(dist: &Path, reference: &Path, width: u32, height: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("vmaf.json");
    let script = r#"exec "$1" -q --threads 2 --model version=vmaf_v0.6.1 --json -o "$5" \
        -r <(ffmpeg -nostdin -loglevel error -i "$2" -vf format=yuv420p10le -strict -1 -f yuv4mpegpipe -) \
        -d <(ffmpeg -nostdin -loglevel error -i "$3" -vf "scale=$4:flags=bicubic,format=yuv420p10le" -strict -1 -f yuv4mpegpipe -)"#;
    let st = Command::new("bash")
        .args(["-c", script, "vmaf"])
        .arg(vmaf_tool())
        .arg(reference)
        .arg(dist)
        .arg(format!("{width}:{height}"))
        .arg(&json)
        .status()
        .unwrap();
    assert!(st.success());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    report["pooled_metrics"]["vmaf"]["mean"].as_f64().unwrap()
}

#[test]
fn vmaf_is_what_the_vmaf_tool_scores_from_the_ffmpeg_command_line() {
    let src = media("bikes.mp4");
    let tool = vmaf_tool();
    let dir = tempfile::tempdir().unwrap();
    let r = rung(320, 136);
    let (eight, ten) = (dir.path().join("8.mp4"), dir.path().join("10.mp4"));
    encode(&src, &eight, &r, Tier::Fast, Some(32.0));
    encode_with(&src, &ten, &r, VideoCodec::Hevc, Tier::Extreme, Some(32.0));
    let q = vtx_media::measure_window(
        &src,
        None,
        0,
        &[eight.clone(), ten.clone()],
        Some(&tool),
        Deadline::none(),
    )
    .unwrap();
    for (q, out) in q.iter().zip([&eight, &ten]) {
        let ours = q.vmaf.expect("asked for");
        let theirs = cli_vmaf(out, &src, 640, 272);
        assert!(
            (ours - theirs).abs() < 0.05,
            "{}: {ours} vs the tool's {theirs}",
            out.display()
        );
        assert!((40.0..100.0).contains(&ours), "{ours}");
    }
    // Without the tool, no score.
    assert_eq!(
        measure(&src, 0, &[eight], Deadline::none()).unwrap()[0].vmaf,
        None
    );
}

#[test]
fn per_title_reaches_a_vmaf_target() {
    let src = derived(
        "bikes-4s.mp4",
        &[
            "-i",
            media("bikes.mp4").to_str().unwrap(),
            "-t",
            "4",
            "-c",
            "copy",
        ],
    );
    let tool = vmaf_tool();
    let p = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = rung(640, 272);
    let target = 90.0;
    let search = Search {
        input: &src,
        window: Window::whole(&p.video),
        frame_rate: p.video.frame_rate_q,
        rotation: 0,
        tier: Tier::High,
        target: QualityTarget::Vmaf(target),
        psychovisual: false,
        vmaf: Some(&tool),
        threads: None,
        scratch: &dir.path().join("scratch"),
        deadline: Deadline::none(),
    };
    let output = RenditionOutput {
        rung: r.clone(),
        codec: VideoCodec::H264,
        path: dir.path().join("unused.mp4"),
        crf: None,
    };
    let choice = choose_crfs(&search, std::slice::from_ref(&output))
        .unwrap()
        .remove(0);
    let out = dir.path().join("full.mp4");
    encode(&src, &out, &r, Tier::High, Some(choice.crf));
    let vmaf = cli_vmaf(&out, &src, 640, 272);
    assert!(
        (vmaf - target).abs() < 2.0,
        "crf {} gave VMAF {vmaf} for a target of {target} ({choice:?})",
        choice.crf
    );
    // Without the tool a VMAF target is refused, not guessed.
    let blind = Search {
        vmaf: None,
        ..search
    };
    assert!(choose_crfs(&blind, &[output]).is_err());
}
