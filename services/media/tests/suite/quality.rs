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
    // A 10-bit output (the extreme tier's HEVC) is compared at 10 bits, undithered.
    let deep = dir.path().join("small-10bit.mp4");
    encode_with(&src, &deep, &r, VideoCodec::Hevc, Tier::Extreme, Some(30.0));
    let ours = measure(&src, 0, std::slice::from_ref(&deep), Deadline::none()).unwrap()[0];
    let (psnr, ssim) = cli_quality(&deep, &src, r.width, r.height, "yuv420p10le");
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
    let (_, dithered) = cli_quality(&deep, &src, r.width, r.height, "yuv420p");
    assert!(ours.ssim > dithered, "{} vs {dithered} at 8 bits", ours.ssim);
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
