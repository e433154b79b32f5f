//! The whole media pipeline on real clips and on odd inputs derived from them with the ffmpeg
//! command line: B-frames and many GOPs, variable frame rate, rotation, odd sizes, HEVC, no
//! audio, truncation.

use std::path::Path;
use std::process::Command;

use vtx_domain::ErrorCode;
use vtx_media::{
    Deadline, Limits, Manifest, PipelineRequest, Tier, VideoCodec, probe, run_pipeline,
};
use vtx_testkit::{derived, gop_bframes, media};

fn run(
    input: &Path,
    out: &Path,
    slice_seconds: f64,
    tier: Tier,
) -> Result<Manifest, vtx_media::MediaError> {
    let mut req = PipelineRequest::new(input, out);
    req.slice_seconds = slice_seconds;
    req.tier = tier;
    req.jobs = 2;
    run_pipeline(&req)
}

fn assert_frames_and_sync(m: &Manifest, out: &Path) {
    let src = &m.source.video;
    let frame = 1.0 / src.frame_rate;
    for r in &m.renditions {
        let p = probe(&out.join(&r.file), &Limits::default(), Deadline::none()).unwrap();
        if src.variable_frame_rate {
            assert!(
                (p.video.duration_seconds - src.duration_seconds).abs() <= frame + 1e-6,
                "{}: duration {} vs source {}",
                r.name,
                p.video.duration_seconds,
                src.duration_seconds
            );
        } else {
            assert_eq!(p.video.frames, src.frames, "{}: frame count", r.name);
        }
        assert_eq!(r.frames, p.video.frames);
        assert_eq!(p.video.width % 2, 0);
        assert_eq!(p.video.height % 2, 0);
        // Audio runs as long beside the video as in the source (within an AAC frame).
        if let (Some(a), Some(sa)) = (&p.audio, &m.source.audio) {
            let (out, source) = (
                a.duration_seconds - p.video.duration_seconds,
                sa.duration_seconds - src.duration_seconds,
            );
            assert!(
                (out - source).abs() <= frame + 1024.0 / f64::from(a.sample_rate) + 1e-3,
                "{}: audio lasts {out:+.3} s beyond the video, {source:+.3} s in the source",
                r.name,
            );
        }
        assert!(r.prefetch_bytes_3s > 0 && r.prefetch_bytes_3s <= r.bytes);
    }
}

#[test]
fn slices_merged_keep_the_frames_of_a_monolithic_encode() {
    let input = gop_bframes();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Rungs at their standard peaks: a rung capped at the source's own rate (360p here, from a
    // 0.7 Mb/s source) has a tight buffer, and each slice leaves part of it unspent, so a sliced
    // encode of such a rung spends ~9% fewer bits than a monolithic one (docs/architecture.md,
    // "Never inflate"); `ladder::` covers capped rungs.
    let run = |out: &Path, slice_seconds| {
        let mut req = PipelineRequest::new(&input, out);
        req.slice_seconds = slice_seconds;
        req.jobs = 2;
        req.max_bitrate_factor = 4.0;
        run_pipeline(&req)
    };
    let sliced = run(a.path(), 3.0).unwrap();
    let whole = run(b.path(), 0.0).unwrap();
    assert!(sliced.source.video.reordered, "the fixture has B-frames");
    assert!(sliced.slices >= 3, "{} slices", sliced.slices);
    assert_eq!(whole.slices, 1);
    assert_frames_and_sync(&sliced, a.path());
    assert_frames_and_sync(&whole, b.path());
    for (s, w) in sliced.renditions.iter().zip(&whole.renditions) {
        assert_eq!(s.frames, w.frames, "{}", s.name);
        assert!((s.duration - w.duration).abs() < 1e-6, "{}", s.name);
        // No visible seams: quality of the stitched encode stays with the monolithic one.
        let (sp, wp) = (s.psnr.unwrap(), w.psnr.unwrap());
        assert!(
            (sp - wp).abs() < 0.5,
            "{}: PSNR sliced {sp} vs whole {wp}",
            s.name
        );
        assert!(sp > 30.0 && s.ssim.unwrap() > 0.9, "{}: {sp} dB", s.name);
    }
    assert!(a.path().join("cover.jpg").exists());
    assert!(a.path().join("manifest.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(a.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".vtx-work"))
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind");
}

#[test]
fn every_hls_segment_starts_on_a_keyframe_and_lasts_about_two_seconds() {
    let input = gop_bframes();
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 3.0, Tier::Fast).unwrap();
    let master = std::fs::read_to_string(out.path().join(m.hls_master.as_ref().unwrap())).unwrap();
    for r in &m.renditions {
        assert!(master.contains(&format!("RESOLUTION={}x{}", r.width, r.height)));
        assert!(master.contains(&format!("CODECS=\"{},mp4a.40.2\"", r.codec_string)));
        let playlist = out.path().join(r.hls_playlist.as_ref().unwrap());
        let dir = playlist.parent().unwrap();
        let text = std::fs::read_to_string(&playlist).unwrap();
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\""));
        let init = std::fs::read(dir.join("init.mp4")).unwrap();
        let mut durations = Vec::new();
        let mut frames = 0;
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("#EXTINF:") {
                durations.push(d.trim_end_matches(',').parse::<f64>().unwrap());
            }
            if line.ends_with(".m4s") {
                let mut data = init.clone();
                data.extend(std::fs::read(dir.join(line)).unwrap());
                let joined = out.path().join("joined.mp4");
                std::fs::write(&joined, data).unwrap();
                let p = probe(&joined, &Limits::default(), Deadline::none()).unwrap();
                assert_eq!(
                    p.video.keyframes[0].pts, p.video.start_pts,
                    "{} {line} starts on a non-keyframe",
                    r.name
                );
                frames += p.video.frames;
            }
        }
        assert_eq!(
            frames, m.source.video.frames,
            "{}: HLS holds every frame",
            r.name
        );
        let (last, rest) = durations.split_last().unwrap();
        assert!(
            rest.iter().all(|d| (d - 2.0).abs() < 0.05),
            "{}: {durations:?}",
            r.name
        );
        assert!(*last <= 2.05);
    }
}

#[test]
fn variable_frame_rate_keeps_its_duration() {
    let src = media("bikes.mp4");
    // Drop 3 of every 10 frames but keep the others' times: gaps make the rate variable.
    let input = derived(
        "vfr.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "select='lt(mod(n\\,10)\\,7)'",
            "-vsync",
            "vfr",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "30",
        ],
    );
    let p = probe(&input, &Limits::default(), Deadline::none()).unwrap();
    assert!(p.video.variable_frame_rate, "the fixture is variable-rate");
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 3.0, Tier::Fast).unwrap();
    assert!(m.slices >= 2);
    assert_frames_and_sync(&m, out.path());
    for r in &m.renditions {
        let got = probe(
            &out.path().join(&r.file),
            &Limits::default(),
            Deadline::none(),
        )
        .unwrap();
        assert_eq!(
            got.video.frames, p.video.frames,
            "{}: every kept frame encoded once",
            r.name
        );
    }
}

#[test]
fn rotation_is_applied_to_the_pixels_as_the_ffmpeg_command_line_does() {
    let input = vtx_testkit::rotated();
    let p = probe(&input, &Limits::default(), Deadline::none()).unwrap();
    assert_eq!(p.video.rotation % 180, 90);
    assert_eq!((p.video.display_width, p.video.display_height), (272, 640));
    // The command line's own autorotation is the reference for the direction.
    let reference = derived(
        "rotated-by-cli.mp4",
        &[
            "-i",
            input.to_str().unwrap(),
            "-c:v",
            "libx264",
            "-crf",
            "12",
            "-preset",
            "veryfast",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 4.0, Tier::Fast).unwrap();
    assert_frames_and_sync(&m, out.path());
    let top = m.renditions.last().unwrap();
    assert_eq!((top.width, top.height), (272, 640));
    for r in &m.renditions {
        assert!(r.height > r.width, "{} is {}x{}", r.name, r.width, r.height);
        let got = probe(
            &out.path().join(&r.file),
            &Limits::default(),
            Deadline::none(),
        )
        .unwrap();
        assert_eq!(
            got.video.rotation, 0,
            "pixels rotated, no display matrix left"
        );
    }
    let q = vtx_media::measure(
        &reference,
        0,
        &[out.path().join(&top.file)],
        Deadline::none(),
    )
    .unwrap();
    assert!(
        q[0].psnr > 30.0,
        "rotated the other way? PSNR against the CLI's rotation: {}",
        q[0].psnr
    );
}

#[test]
fn odd_dimensions_give_even_renditions() {
    let src = media("bikes.mp4");
    let input = derived(
        "odd-square.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "scale=321:241,setsar=1",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv444p",
            "-preset",
            "veryfast",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 4.0, Tier::Fast).unwrap();
    assert_frames_and_sync(&m, out.path());
    assert_eq!(m.renditions.len(), 1);
    assert_eq!((m.renditions[0].width, m.renditions[0].height), (320, 240));
}

#[test]
fn hevc_source_without_audio_transcodes() {
    let src = media("bikes.mp4");
    let input = derived(
        "hevc.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-frames:v",
            "100",
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=error:keyint=25",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 2.0, Tier::Fast).unwrap();
    assert_eq!(m.source.video.codec, "hevc");
    assert!(!m.audio);
    assert_frames_and_sync(&m, out.path());
}

#[test]
fn extreme_tier_encodes_hevc_and_av1() {
    let out = tempfile::tempdir().unwrap();
    let m = run(
        &media("carphone_pristine.mp4"),
        out.path(),
        2.0,
        Tier::Extreme,
    )
    .unwrap();
    let codecs: Vec<VideoCodec> = m.renditions.iter().map(|r| r.codec).collect();
    assert!(
        codecs.contains(&VideoCodec::Hevc) && codecs.contains(&VideoCodec::Av1),
        "{codecs:?}"
    );
    assert_frames_and_sync(&m, out.path());
    for r in &m.renditions {
        let got = probe(
            &out.path().join(&r.file),
            &Limits::default(),
            Deadline::none(),
        )
        .unwrap();
        assert_eq!(got.video.codec, r.codec.label());
        // 10-bit: HEVC Main 10 (profile 2), AV1 Main at 10 bits.
        let ten_bit = match r.codec {
            VideoCodec::Hevc => r.codec_string.starts_with("hvc1.2."),
            VideoCodec::Av1 => {
                r.codec_string.starts_with("av01.0.") && r.codec_string.ends_with(".10")
            }
            VideoCodec::H264 => false,
        };
        assert!(ten_bit, "{}", r.codec_string);
    }
}

#[test]
fn truncated_input_fails_typed_and_leaves_nothing() {
    let full = gop_bframes();
    let faststart = derived(
        "faststart.mp4",
        &[
            "-i",
            full.to_str().unwrap(),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
        ],
    );
    let data = std::fs::read(&faststart).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Index at the front, media cut off: the file opens but its samples are missing.
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &data[..data.len() * 6 / 10]).unwrap();
    // Index at the end, cut off: nothing to open.
    let headless = dir.path().join("headless.mp4");
    std::fs::write(&headless, &std::fs::read(&full).unwrap()[..data.len() / 2]).unwrap();

    for (input, code) in [
        (&cut, ErrorCode::CorruptStream),
        (&headless, ErrorCode::NotAVideo),
    ] {
        let out = dir.path().join(format!(
            "out-{}",
            input.file_stem().unwrap().to_string_lossy()
        ));
        let err = run(input, &out, 3.0, Tier::Fast).unwrap_err();
        assert_eq!(err.code(), code, "{}: {err}", input.display());
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "partial output left: {left:?}");
    }
}

#[test]
fn watermark_is_drawn_without_losing_frames() {
    let dir = tempfile::tempdir().unwrap();
    let wm = dir.path().join("wm.png");
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=48x48",
            "-frames:v",
            "1",
        ])
        .arg(&wm)
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.path().join("out");
    let mut req = PipelineRequest::new(media("bikes.mp4"), &out);
    req.watermark = Some(wm);
    req.slice_seconds = 4.0;
    let m = run_pipeline(&req).unwrap();
    assert_frames_and_sync(&m, &out);
    let plain = run(
        &media("bikes.mp4"),
        &dir.path().join("plain"),
        4.0,
        Tier::Fast,
    )
    .unwrap();
    // The red square is not in the source: the watermarked encode is further from it.
    assert!(m.renditions[0].psnr.unwrap() < plain.renditions[0].psnr.unwrap());
}

#[test]
fn edit_list_pre_roll_stays_hidden() {
    let full = gop_bframes();
    // Cut between keyframes with stream copy: an edit list hides the frames before 1.3 s.
    let input = derived(
        "editlist.mp4",
        &["-ss", "1.3", "-i", full.to_str().unwrap(), "-c", "copy"],
    );
    let p = probe(&input, &Limits::default(), Deadline::none()).unwrap();
    assert!(
        p.video.keyframes[0].pts < p.video.start_pts,
        "decoding starts before the first shown frame"
    );
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 3.0, Tier::Fast).unwrap();
    assert_frames_and_sync(&m, out.path());
    for r in &m.renditions {
        // Off by even one frame, the comparison with the source would collapse.
        assert!(r.psnr.unwrap() > 30.0, "{}: {:?} dB", r.name, r.psnr);
    }
}

#[test]
fn anamorphic_source_gets_square_pixels() {
    let src = media("bikes.mp4");
    let input = derived(
        "anamorphic.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "scale=480:272,setsar=4/3",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ],
    );
    let p = probe(&input, &Limits::default(), Deadline::none()).unwrap();
    assert_eq!(
        (p.video.width, p.video.display_width, p.video.display_height),
        (480, 640, 272)
    );
    let out = tempfile::tempdir().unwrap();
    let m = run(&input, out.path(), 4.0, Tier::Fast).unwrap();
    assert_frames_and_sync(&m, out.path());
    // Square pixels at the display size; 240p (564x240) too, unless the source's low bitrate
    // makes it pointless beside 272p (never inflate).
    let sizes: Vec<(u32, u32)> = m.renditions.iter().map(|r| (r.width, r.height)).collect();
    assert_eq!(sizes.last(), Some(&(640, 272)), "{sizes:?}");
    for r in &m.renditions {
        let got = probe(
            &out.path().join(&r.file),
            &Limits::default(),
            Deadline::none(),
        )
        .unwrap();
        assert_eq!(
            got.video.display_width, got.video.width,
            "{}: square pixels",
            r.name
        );
        assert_eq!((got.video.width, got.video.height), (r.width, r.height));
    }
}

#[test]
fn gpu_encoders_count_only_when_they_open_and_workers_fall_back_to_libx264() {
    let found = vtx_media::detect_h264_encoders();
    assert_eq!(
        found.last().map(String::as_str),
        Some("libx264"),
        "{found:?}"
    );
    let mut unique = found.clone();
    unique.dedup();
    assert_eq!(unique, found);
    // Ask for encoders that cannot open here (NVENC without a GPU, or no such encoder at all):
    // the encode still succeeds, with libx264.
    let wanted = ["h264_nvenc", "h264_vaapi", "h264_qsv", "no_such_encoder"]
        .into_iter()
        .filter(|e| !found.iter().any(|f| f == e));
    for wanted in wanted {
        let dir = tempfile::tempdir().unwrap();
        let src = media("carphone_pristine.mp4");
        let p = probe(&src, &Limits::default(), Deadline::none()).unwrap();
        let outputs = vtx_domain::plan_ladder(p.video.width, p.video.height)
            .into_iter()
            .map(|rung| vtx_media::RenditionOutput {
                path: dir.path().join(format!("{}.mp4", rung.name)),
                codec: VideoCodec::H264,
                rung,
                crf: None,
            })
            .collect();
        let mut req = vtx_media::TranscodeRequest::new(&src, outputs, Tier::Fast);
        req.h264_encoder = Some(wanted.to_string());
        let reports = vtx_media::transcode_ladder(&req).unwrap();
        for r in reports {
            let got = probe(&r.path, &Limits::default(), Deadline::none()).unwrap();
            assert_eq!(got.video.codec, "h264", "{wanted}");
            assert_eq!(got.video.frames, p.video.frames);
        }
    }
}
