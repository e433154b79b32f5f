//! Instant publish of standard inputs: a chunk that players can play as it is gets remuxed,
//! without re-encoding, into one HLS rendition whose chunks play as one stream with every frame
//! of the source at its own time; anything else (open GOP, HEVC 4K, a high bitrate) is named as
//! not standard, with the reason.

use std::path::Path;

use ffmpeg_next::media;
use vtx_domain::live_ingest::{ChunkEncode, InstantPolicy, package_chunks};
use vtx_media::{
    Deadline, Limits, SOURCE_RENDITION, VideoCodec, chunk_hls_dir, cut_chunks, probe, remux_chunk,
    remux_hls_to_mp4, standard_chunk,
};
use vtx_testkit::{derived, gop_bframes, media as shared};

/// Every video frame's presentation time, in seconds from the first, in presentation order.
fn frame_times(path: &Path) -> Vec<f64> {
    let mut ictx = ffmpeg_next::format::input(path).expect("opens");
    let v = ictx.streams().best(media::Type::Video).expect("video");
    let (index, tb) = (v.index(), v.time_base());
    let mut times: Vec<f64> = ictx
        .packets()
        .filter(|(s, _)| s.index() == index)
        .map(|(_, p)| p.pts().expect("pts") as f64 * f64::from(tb))
        .collect();
    times.sort_by(f64::total_cmp);
    let first = times[0];
    times.iter().map(|t| t - first).collect()
}

fn verdict(path: &Path, policy: &InstantPolicy) -> Result<(), String> {
    ffmpeg_next::init().unwrap();
    standard_chunk(path, policy, &Limits::default(), Deadline::none()).expect("probes")
}

#[test]
fn standard_chunks_remuxed_as_they_are_play_as_one_stream_with_every_frame() {
    // H.264 High, closed GOPs of 1 s, B-frames, AAC.
    remuxed_chunks_play_like_the_source(&gop_bframes(), 4);
    // A phone's variable frame rate: every frame keeps its own time.
    remuxed_chunks_play_like_the_source(&vtx_testkit::recordings::vfr_phone(), 1);
}

fn remuxed_chunks_play_like_the_source(src: &Path, min_chunks: usize) {
    let src = src.to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let chunks = cut_chunks(&src, dir.path(), 2.0, Deadline::none()).unwrap();
    assert!(chunks.len() >= min_chunks, "{} chunks", chunks.len());
    let policy = InstantPolicy::default();
    let mut remuxed: Vec<(u32, ChunkEncode)> = Vec::new();
    for c in &chunks {
        assert_eq!(verdict(&c.path, &policy), Ok(()), "chunk {}", c.index);
        let out = dir.path().join(format!("remux-{}", c.index));
        let e = remux_chunk(&c.path, &out, &Limits::default(), Deadline::none()).unwrap();
        let to = dir
            .path()
            .join("hls")
            .join(SOURCE_RENDITION)
            .join(format!("c{:05}", c.index));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(chunk_hls_dir(&out, SOURCE_RENDITION), &to).unwrap();
        remuxed.push((c.index, e));
    }
    let packaged = package_chunks(&remuxed).expect("the chunks make one stream");
    assert_eq!(packaged.renditions.len(), 1);
    let r = &packaged.renditions[0];
    let playlist = dir
        .path()
        .join("hls")
        .join(SOURCE_RENDITION)
        .join("index.m3u8");
    std::fs::write(&playlist, &r.playlist).unwrap();
    assert!(
        packaged.master.contains("source/index.m3u8"),
        "{}",
        packaged.master
    );
    assert!(packaged.master.contains("mp4a.40.2"), "{}", packaged.master);

    // Every frame of the source, each at its own time (no frame re-timed: stream copy).
    let source = frame_times(&src);
    let hls = frame_times(&playlist);
    assert_eq!(hls.len(), source.len());
    for (i, (a, b)) in source.iter().zip(&hls).enumerate() {
        assert!(
            (a - b).abs() < 1e-3,
            "frame {i}: source {a:.4} s, HLS {b:.4} s"
        );
    }
    let p = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    assert_eq!(r.frames, p.video.frames);
    assert_eq!(
        (r.width, r.height),
        (p.video.display_width, p.video.display_height)
    );

    // The MP4 a worker muxes from the same segments: every frame again, audio in step.
    let mp4 = dir.path().join("source.mp4");
    let report = remux_hls_to_mp4(&playlist, VideoCodec::H264, &mp4, Deadline::none()).unwrap();
    assert_eq!(report.frames, p.video.frames);
    let m = frame_times(&mp4);
    assert_eq!(m.len(), source.len());
    for (i, (a, b)) in source.iter().zip(&m).enumerate() {
        assert!(
            (a - b).abs() < 1e-3,
            "frame {i}: source {a:.4} s, MP4 {b:.4} s"
        );
    }
    let mp = probe(&mp4, &Limits::default(), Deadline::none()).unwrap();
    let audio = mp.audio.expect("audio");
    assert!(
        (audio.duration_seconds - mp.video.duration_seconds).abs() < 0.1,
        "audio {} s, video {} s",
        audio.duration_seconds,
        mp.video.duration_seconds
    );
}

#[test]
fn open_gops_hevc_4k_and_high_bitrates_are_not_standard() {
    let policy = InstantPolicy::default();
    let bbb = shared("bigbuckbunny.mp4");
    let bbb = bbb.to_str().unwrap();
    // x264 with open GOPs: frames after each keyframe but the first are shown before it.
    let open_gop = derived(
        "instant-open-gop.ts",
        &[
            "-i",
            bbb,
            "-t",
            "4",
            "-vf",
            "scale=640:360",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-x264-params",
            "open-gop=1:keyint=25:min-keyint=25:scenecut=0",
            "-bf",
            "3",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    );
    let why = verdict(&open_gop, &policy).unwrap_err();
    assert!(why.contains("open GOP"), "{why}");

    let hevc_4k = derived(
        "instant-hevc-4k.ts",
        &[
            "-i",
            bbb,
            "-t",
            "0.5",
            "-vf",
            "scale=3840:2160",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    );
    let why = verdict(&hevc_4k, &policy).unwrap_err();
    assert!(why.contains("hevc"), "{why}");

    // Noise at a near-lossless quality: tens of megabits per second.
    let high_rate = derived(
        "instant-high-bitrate.ts",
        &[
            "-i",
            bbb,
            "-t",
            "2",
            "-vf",
            "scale=1280:720,noise=alls=60:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "4",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    );
    let why = verdict(&high_rate, &policy).unwrap_err();
    assert!(why.contains("above the cap"), "{why}");

    // 29.97 fps with MP3 audio (as some cameras record): players expect AAC in HLS.
    let ntsc = derived(
        "instant-ntsc-mp3.ts",
        &[
            "-i",
            vtx_testkit::recordings::ntsc_mp3().to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "mpegts",
        ],
    );
    let why = verdict(&ntsc, &policy).unwrap_err();
    assert!(why.contains("mp3"), "{why}");

    // And the same standard chunk passes under the default policy but not under a low cap.
    let dir = tempfile::tempdir().unwrap();
    let chunks = cut_chunks(&gop_bframes(), dir.path(), 2.0, Deadline::none()).unwrap();
    assert_eq!(verdict(&chunks[0].path, &policy), Ok(()));
    let capped = InstantPolicy {
        max_bitrate: 100_000,
        ..policy
    };
    assert!(
        verdict(&chunks[0].path, &capped)
            .unwrap_err()
            .contains("above the cap")
    );
}
