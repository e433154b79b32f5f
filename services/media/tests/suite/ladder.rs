//! The media engine on real clips from shared/media and inputs derived from them.

use std::path::Path;
use std::process::Command;

use vtx_domain::{ErrorCode, plan_ladder};
use vtx_media::{
    Deadline, Limits, RenditionOutput, Tier, TranscodeRequest, VideoCodec, probe, transcode_ladder,
};
use vtx_testkit::media;

/// Derives an input with the ffmpeg command line (installed by the setup script).
fn ffmpeg(args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg command line is installed by deploy/local/setup.sh");
    assert!(st.success(), "ffmpeg {args:?}");
}

fn ladder_request(input: &Path, dir: &Path) -> TranscodeRequest {
    let p = probe(input, &Limits::default(), Deadline::none()).unwrap();
    let outputs = plan_ladder(p.video.width, p.video.height)
        .into_iter()
        .map(|rung| RenditionOutput {
            path: dir.join(format!("{}.mp4", rung.name)),
            codec: VideoCodec::H264,
            rung,
            crf: None,
        })
        .collect();
    TranscodeRequest::new(input, outputs, Tier::Fast)
}

/// Offset of the first top-level MP4 box of `kind`.
fn box_offset(path: &Path, kind: &[u8; 4]) -> Option<u64> {
    let data = std::fs::read(path).unwrap();
    let mut off = 0usize;
    while off + 8 <= data.len() {
        let size = u32::from_be_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        if &data[off + 4..off + 8] == kind {
            return Some(off as u64);
        }
        let size = if size == 1 {
            u64::from_be_bytes(data[off + 8..off + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        if size < 8 {
            return None;
        }
        off += size;
    }
    None
}

#[test]
fn probe_reads_the_sample_clip() {
    let p = probe(
        &media("bigbuckbunny.mp4"),
        &Limits::default(),
        Deadline::none(),
    )
    .unwrap();
    assert_eq!((p.video.width, p.video.height), (1280, 720));
    assert_eq!(p.video.frames, 132);
    assert!((p.video.frame_rate - 25.0).abs() < 1e-9);
    assert!(!p.video.keyframes.is_empty());
    assert_eq!(p.video.keyframes[0].pts, p.video.start_pts);
    assert_eq!(p.video.rotation, 0);
    assert!(!p.video.variable_frame_rate);
    let a = p.audio.expect("bigbuckbunny has audio");
    assert!(a.sample_rate > 0 && a.channels > 0);
}

#[test]
fn one_decode_ladder_keeps_every_frame_on_every_rung() {
    // Encoders with threads of their own, and single-threaded ones (slices on one-core
    // workers); 240p is scaled from 480p in both.
    for threads in [None, Some(1)] {
        one_decode_ladder_keeps_every_frame(threads);
    }
}

fn one_decode_ladder_keeps_every_frame(threads: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let src = media("bigbuckbunny.mp4");
    let source = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    let mut req = ladder_request(&src, dir.path());
    req.threads = threads;
    assert_eq!(req.outputs.len(), 4, "240p..720p for a 720p source");
    let reports = transcode_ladder(&req).unwrap();
    let names: Vec<_> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["240p", "360p", "480p", "720p"],
        "in the order asked"
    );
    for r in &reports {
        let out = probe(&r.path, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(out.video.frames, source.video.frames, "{}", r.name);
        assert_eq!(r.frames, source.video.frames, "{}", r.name);
        assert_eq!((out.video.width, out.video.height), (r.width, r.height));
        assert!(
            (out.video.duration_seconds - source.video.duration_seconds).abs() < 1.0 / 25.0,
            "{}: {} vs {}",
            r.name,
            out.video.duration_seconds,
            source.video.duration_seconds
        );
        let audio = out.audio.as_ref().expect("audio kept");
        assert_eq!(audio.codec, "aac");
        // Audio and video end together (AAC frames are 1024 samples: allow one of them + a frame).
        assert!(
            (audio.duration_seconds - out.video.duration_seconds).abs() < 0.1,
            "{}: audio {} video {}",
            r.name,
            audio.duration_seconds,
            out.video.duration_seconds
        );
        let (moov, mdat) = (box_offset(&r.path, b"moov"), box_offset(&r.path, b"mdat"));
        assert!(
            moov.unwrap() < mdat.unwrap(),
            "{}: index must come first",
            r.name
        );
    }
}

#[test]
fn video_without_audio_transcodes() {
    let dir = tempfile::tempdir().unwrap();
    let src = media("bikes.mp4");
    let reports = transcode_ladder(&ladder_request(&src, dir.path())).unwrap();
    assert_eq!(reports.len(), 2);
    for r in reports {
        let out = probe(&r.path, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(out.video.frames, 250);
        assert!(out.audio.is_none());
    }
}

#[test]
fn text_file_is_not_a_video() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "this is not a video, just some words\n".repeat(200)).unwrap();
    let err = probe(&p, &Limits::default(), Deadline::none()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAVideo);
}

#[test]
fn audio_only_file_has_no_video_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audio.m4a");
    ffmpeg(&[
        "-i",
        media("bigbuckbunny.mp4").to_str().unwrap(),
        "-vn",
        "-c",
        "copy",
        p.to_str().unwrap(),
    ]);
    let err = probe(&p, &Limits::default(), Deadline::none()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoVideoStream);
}

#[test]
fn limits_refuse_long_and_large_inputs() {
    let src = media("bikes.mp4");
    let short = Limits {
        max_duration: std::time::Duration::from_secs(5),
        ..Limits::default()
    };
    assert_eq!(
        probe(&src, &short, Deadline::none()).unwrap_err().code(),
        ErrorCode::TooLong
    );
    let small = Limits {
        max_pixels: 320 * 240,
        ..Limits::default()
    };
    assert_eq!(
        probe(&src, &small, Deadline::none()).unwrap_err().code(),
        ErrorCode::TooLarge
    );
    let tiny_file = Limits {
        max_file_bytes: 1000,
        ..Limits::default()
    };
    assert_eq!(
        probe(&src, &tiny_file, Deadline::none())
            .unwrap_err()
            .code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn expired_deadline_stops_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = ladder_request(&media("bikes.mp4"), dir.path());
    req.deadline = Deadline::after(std::time::Duration::ZERO);
    let err = transcode_ladder(&req).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TranscodeTimeout);
    for o in &req.outputs {
        assert!(!o.path.exists(), "{} left behind", o.path.display());
    }
}

#[test]
fn every_codec_stays_under_its_rungs_peak_rate() {
    // At a quality setting far above what the rung allows, the rung's cap decides the rate:
    // x264's and x265's VBV, SVT-AV1's capped CRF. (Uncapped, this clip takes 200 to 700 kb/s.)
    let src = media("carphone_pristine.mp4");
    let dir = tempfile::tempdir().unwrap();
    let cap = 60_000;
    let rung = vtx_domain::Rung {
        name: "144p".into(),
        width: 176,
        height: 144,
        max_bitrate: cap,
        capped_by_source: false,
    };
    for (tier, codecs) in [
        (Tier::Fast, &[VideoCodec::H264][..]),
        (Tier::Extreme, &[VideoCodec::Hevc, VideoCodec::Av1][..]),
    ] {
        let outputs = codecs
            .iter()
            .map(|&codec| RenditionOutput {
                rung: rung.clone(),
                codec,
                path: dir.path().join(format!("{}.mp4", codec.label())),
                crf: None,
            })
            .collect();
        let mut req = TranscodeRequest::new(&src, outputs, tier);
        req.crf = Some(12);
        for r in transcode_ladder(&req).unwrap() {
            // The 4 s clip may spend the VBV buffer (2 s at the cap) on top of the cap itself.
            assert!(
                r.bitrate < u64::from(cap) * 3 / 2,
                "{:?}: {} b/s against a cap of {cap}",
                r.codec,
                r.bitrate
            );
        }
    }
}

#[test]
fn no_rendition_peaks_above_a_low_bitrate_source() {
    // 720p at about 500 kb/s: the standard 480p and 720p peaks (1.4 and 2.8 Mb/s) are far above
    // what the source holds; re-encoding must not make any rendition larger than the source.
    let src = vtx_testkit::derived(
        "low-bitrate-720p.mp4",
        &[
            "-i",
            media("bigbuckbunny.mp4").to_str().unwrap(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            "500k",
            "-maxrate",
            "500k",
            "-bufsize",
            "1000k",
            "-g",
            "25",
            "-c:a",
            "copy",
        ],
    );
    let source = vtx_media::probe(
        &src,
        &vtx_media::Limits::default(),
        vtx_media::Deadline::none(),
    )
    .unwrap();
    let source_rate = source.video.bitrate;
    assert!(source_rate < 700_000, "{source_rate}");
    for tier in [Tier::Fast, Tier::High] {
        let out = tempfile::tempdir().unwrap();
        let mut req = vtx_media::PipelineRequest::new(&src, out.path());
        req.tier = tier;
        req.slice_seconds = 0.0;
        req.quality = false;
        // Per-title may only lower the rate further; the cap holds on its own.
        req.quality_target = None;
        let m = vtx_media::run_pipeline(&req).unwrap();
        // Rungs within 15% of the next one's capped peak are gone: 480p (capped at the source's
        // rate, like 720p) costs as much as 720p.
        let names: Vec<&str> = m.renditions.iter().map(|r| r.name.as_str()).collect();
        assert!(!names.contains(&"480p"), "{tier:?}: {names:?}");
        assert!(names.contains(&"720p"), "{tier:?}: {names:?}");
        for r in &m.renditions {
            let video = vtx_media::probe(
                &out.path().join(&r.file),
                &vtx_media::Limits::default(),
                vtx_media::Deadline::none(),
            )
            .unwrap()
            .video
            .bitrate;
            assert!(
                video <= source_rate,
                "{tier:?} {}: {video} b/s from a {source_rate} b/s source",
                r.name
            );
        }
    }
}
