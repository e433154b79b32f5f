//! Faithful to real recordings: what phones and cameras upload (variable frame rate, audio
//! stored before video, AAC priming and edit lists, audio starting before or after the video,
//! 29.97 fps with MP3, rotation, AVI without presentation times, one damaged packet) keeps
//! every frame at its source time and every audio sample where the source has it, through
//! `vtx transcode` (sliced) and through chunks encoded one by one, checked from the outside with
//! ffprobe against the source.

use crate::support;

use std::path::{Path, PathBuf};

use vtx_domain::live_ingest::ChunkEncode;
use vtx_media::{
    Deadline, Manifest, MediaError, PipelineRequest, Tier, VideoCodec, cut_chunks,
    remux_hls_to_mp4, run_pipeline,
};
use vtx_testkit::outside::{assert_hls_like_source, assert_same_times, timeline};
use vtx_testkit::recordings::{
    self, Damage, audio_cut, audio_early, audio_late, avi_ac3, avi_without_pts, cfr30, damaged,
    ntsc_mp3, portrait, vfr_concat, vfr_phone,
};

fn recordings() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("variable rate, audio stored first", vfr_phone()),
        ("30/24/15 fps segments", vfr_concat()),
        ("audio 0.5 s before video", audio_early()),
        ("audio 0.5 s after video", audio_late()),
        ("edit list hides 0.5 s of audio", audio_cut()),
        ("29.97 fps + MP3", ntsc_mp3()),
        ("30 fps", cfr30()),
        ("portrait", portrait()),
        ("AVI without presentation times", avi_without_pts()),
    ]
}

fn transcode(src: &Path, out: &Path, tier: Tier) -> Result<Manifest, MediaError> {
    let mut req = PipelineRequest::new(src, out);
    req.tier = tier;
    req.slice_seconds = 2.0;
    req.jobs = 2;
    req.threads = Some(1);
    req.quality = false;
    run_pipeline(&req)
}

/// Every MP4 and HLS rendition of `m` (written under `out`) against the source.
fn assert_renditions_like_source(src: &Path, out: &Path, m: &Manifest, what: &str) {
    assert!(!m.renditions.is_empty());
    for r in &m.renditions {
        let name = format!("{what}, {} MP4", r.name);
        assert_same_times(src, &out.join(&r.file), &name);
        let playlist = out.join(r.hls_playlist.as_deref().expect("HLS"));
        assert_hls_like_source(src, &playlist, &format!("{what}, {} HLS", r.name));
    }
}

#[test]
fn vtx_transcode_keeps_every_frame_and_sample_where_the_source_has_them() {
    for (what, src) in recordings() {
        let out = tempfile::tempdir().unwrap();
        let m = transcode(&src, out.path(), Tier::Fast).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.concealed, Default::default(), "{what}: nothing damaged");
        assert_renditions_like_source(&src, out.path(), &m, what);
    }
}

#[test]
fn the_high_tier_keeps_them_too() {
    for (what, src) in [
        ("variable rate, audio stored first", vfr_phone()),
        ("audio 0.5 s before video", audio_early()),
    ] {
        let out = tempfile::tempdir().unwrap();
        let m = transcode(&src, out.path(), Tier::High).unwrap();
        assert_renditions_like_source(&src, out.path(), &m, what);
    }
}

/// Every audio packet's time (seconds, the first at 0 when `relative`), edit-list-hidden ones
/// left out, read with ffprobe.
fn audio_packet_times(path: &Path) -> Vec<f64> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["packet=pts_time,flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains('D'))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect()
}

#[test]
fn chunks_carry_every_audio_packet_of_the_source() {
    for (what, src) in recordings() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = match cut_chunks(&src, dir.path(), 2.0, Deadline::none()) {
            Ok(c) => c,
            // An edit list hides the last frame (the encoder made one past the audio's end):
            // MPEG-TS cannot say so, and the client sends such a file whole over tus.
            Err(MediaError::NotChunkable(why)) if what.contains("segments") => {
                assert!(why.contains("edit list"), "{why}");
                continue;
            }
            // MPEG-4 Part 2 with B-frames: open GOPs, whose leading frames a cut would lose.
            Err(MediaError::NotChunkable(why)) if what.contains("AVI") => {
                assert!(why.contains("open GOP"), "{why}");
                continue;
            }
            Err(e) => panic!("{what}: {e}"),
        };
        let mut whole = Vec::new();
        for c in &chunks {
            whole.extend(std::fs::read(&c.path).unwrap());
            // Each chunk's audio lies in its own span (the first chunk's may start earlier).
            let times = audio_packet_times(&c.path);
            if c.index > 0 && !times.is_empty() {
                let first = times.iter().copied().fold(f64::MAX, f64::min);
                assert!(
                    first >= c.start_seconds - 1e-3,
                    "{what}: chunk {} starts at {} s, its audio at {first} s",
                    c.index,
                    c.start_seconds
                );
            }
        }
        let joined = dir.path().join("joined.ts");
        std::fs::write(&joined, whole).unwrap();
        let (a, b) = (audio_packet_times(&src), audio_packet_times(&joined));
        assert_eq!(b.len(), a.len(), "{what}: audio packets");
        let shift = b[0] - a[0];
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (y - shift - x).abs() < 1e-3,
                "{what}: audio packet {i} at {y} s, the source's at {x} s"
            );
        }
        // And the video, frame by frame.
        assert_same_times(&src, &joined, what);
    }
}

#[test]
fn chunks_encoded_one_by_one_keep_the_sources_times() {
    for (what, src) in [
        ("variable rate, audio stored first", vfr_phone()),
        ("audio 0.5 s before video", audio_early()),
        ("audio 0.5 s after video", audio_late()),
        ("29.97 fps + MP3", ntsc_mp3()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let chunks = cut_chunks(&src, dir.path(), 2.0, Deadline::none()).unwrap();
        let mut encoded: Vec<(u32, ChunkEncode)> = Vec::new();
        for c in &chunks {
            let e = support::encode_chunk_into(dir.path(), c)
                .unwrap_or_else(|e| panic!("{what}: chunk {}: {e}", c.index));
            encoded.push((c.index, e));
        }
        for (name, playlist) in support::write_playlists(dir.path(), &encoded) {
            assert_hls_like_source(&src, &playlist, &format!("{what}, chunks, {name} HLS"));
            let mp4 = dir.path().join(format!("{name}.mp4"));
            remux_hls_to_mp4(&playlist, VideoCodec::H264, &mp4, Deadline::none()).unwrap();
            assert_same_times(&src, &mp4, &format!("{what}, chunks, {name} MP4"));
        }
    }
}

#[test]
fn one_damaged_packet_is_concealed_counted_and_the_rest_kept() {
    let cases = [
        // (what, file, concealed video, concealed audio)
        (
            "AAC frame",
            damaged(
                "dmg-aac.mp4",
                &recordings::base(),
                "a:0",
                40,
                Damage::Middle,
            ),
            0,
            1,
        ),
        (
            "AC-3 frame in AVI",
            damaged("dmg-ac3.avi", &avi_ac3(), "a:0", 40, Damage::Middle),
            0,
            1,
        ),
        (
            "H.264 packet",
            damaged("dmg-h264.mp4", &ntsc_mp3(), "v:0", 40, Damage::Whole),
            1,
            0,
        ),
    ];
    for (what, src, video, audio) in cases {
        let out = tempfile::tempdir().unwrap();
        let m = transcode(&src, out.path(), Tier::Fast).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            (m.concealed.video_frames, m.concealed.audio_frames),
            (video, audio),
            "{what}: concealed"
        );
        // Concealed, not dropped: every frame, every sample's time.
        assert_renditions_like_source(&src, out.path(), &m, what);
        let src_frames = timeline(&src).frames.len() as u64;
        assert!(
            m.renditions.iter().all(|r| r.frames == src_frames),
            "{what}"
        );
    }
    // A slice error (damage inside a packet whose headers survive): the decoder conceals it.
    let src = damaged("dmg-slice.mp4", &ntsc_mp3(), "v:0", 40, Damage::Middle);
    let out = tempfile::tempdir().unwrap();
    let m = transcode(&src, out.path(), Tier::Fast).unwrap();
    assert_renditions_like_source(&src, out.path(), &m, "H.264 slice error");
}

#[test]
fn damage_beyond_the_policy_fails_as_corrupt_stream_with_the_counts() {
    // 10 of 150 frames (6.7%, over the 1% allowed) lost.
    let src = recordings::damaged_packets(
        "dmg-h264-many.mp4",
        &ntsc_mp3(),
        "v:0",
        &[20, 35, 50, 65, 80, 95, 110, 125, 130, 140],
        Damage::Whole,
    );
    let out = tempfile::tempdir().unwrap();
    let err = transcode(&src, out.path(), Tier::Fast).unwrap_err();
    assert!(matches!(err, MediaError::CorruptStream(_)), "{err:?}");
    assert!(err.to_string().contains("of 150 video frames"), "{err}");
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}
