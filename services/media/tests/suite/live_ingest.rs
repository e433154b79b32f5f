//! Transcoding while the upload arrives: chunks encoded and packaged one by one, then listed in
//! one playlist per rendition, play as one stream with every frame of the source and the audio
//! in step.

use crate::support;

use std::path::Path;

use ffmpeg_next::{Rational, media};
use vtx_domain::live_ingest::{ChunkEncode, check_chunks};
use vtx_media::{Deadline, Limits, VideoCodec, cut_chunks, probe, remux_hls_to_mp4};
use vtx_testkit::{gop_bframes, phone_like_twice};

/// (video packets, video end s, audio end s, first video pts s, first audio pts s), checking
/// that each stream's decode times only go up.
fn read_hls(playlist: &Path) -> (u64, f64, f64, f64, f64) {
    let mut ictx = ffmpeg_next::format::input(playlist).expect("open the playlist");
    let v = ictx.streams().best(media::Type::Video).unwrap();
    let (vi, vtb) = (v.index(), v.time_base());
    let a = ictx.streams().best(media::Type::Audio).unwrap();
    let (ai, atb) = (a.index(), a.time_base());
    let secs = |t: i64, tb: Rational| t as f64 * f64::from(tb.0) / f64::from(tb.1);
    let (mut frames, mut vend, mut aend) = (0u64, 0f64, 0f64);
    let (mut vfirst, mut afirst) = (f64::MAX, f64::MAX);
    let mut last_dts = [i64::MIN, i64::MIN];
    for (s, p) in ictx.packets() {
        let (tb, slot) = if s.index() == vi {
            (vtb, 0)
        } else if s.index() == ai {
            (atb, 1)
        } else {
            continue;
        };
        let dts = p.dts().expect("dts");
        assert!(
            dts > last_dts[slot],
            "decode time goes back: {dts} after {}",
            last_dts[slot]
        );
        last_dts[slot] = dts;
        let pts = p.pts().expect("pts");
        let end = secs(pts + p.duration(), tb);
        if slot == 0 {
            frames += 1;
            vend = vend.max(end);
            vfirst = vfirst.min(secs(pts, tb));
        } else {
            aend = aend.max(end);
            afirst = afirst.min(secs(pts, tb));
        }
    }
    (frames, vend, aend, vfirst, afirst)
}

#[test]
fn chunks_encoded_apart_play_as_one_stream_with_every_frame() {
    chunks_play_as_one_stream(&gop_bframes()); // keyframe every second, B-frames, AAC
}

#[test]
fn chunks_of_a_recording_with_a_join_share_one_clock() {
    // One chunk holds the join of two recordings and probes as variable rate: its segments
    // must still run on the same time scale as its neighbours'.
    chunks_play_as_one_stream(&phone_like_twice());
}

fn chunks_play_as_one_stream(src: &std::path::Path) {
    let src = src.to_path_buf();
    let source = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chunks = cut_chunks(&src, dir.path(), 2.0, Deadline::none()).unwrap();
    assert!(chunks.len() >= 4);

    // Out of order, as chunks may arrive.
    let mut encoded: Vec<(u32, ChunkEncode)> = Vec::new();
    for c in chunks.iter().rev() {
        // The chunk's files go where the tier's playlists will find them.
        let e = support::encode_chunk_into(dir.path(), c).unwrap();
        encoded.push((c.index, e));
    }
    encoded.sort_by_key(|(i, _)| *i);
    let all: Vec<ChunkEncode> = encoded.iter().map(|(_, e)| e.clone()).collect();
    check_chunks(&all).unwrap();
    assert_eq!(
        all.iter().map(|c| c.frames).sum::<u64>(),
        source.video.frames
    );

    let frame = 1.0 / source.video.frame_rate;
    for (name, playlist) in support::write_playlists(dir.path(), &encoded) {
        let (frames, vend, aend, vfirst, afirst) = read_hls(&playlist);
        assert_eq!(frames, source.video.frames, "{}", name);
        let duration = vend - vfirst;
        assert!(
            (duration - source.video.duration_seconds).abs() <= frame + 1e-3,
            "{}: {duration} s vs {} s",
            name,
            source.video.duration_seconds
        );
        assert!(
            (vend - aend).abs() <= frame + 1e-3,
            "{}: video ends at {vend}, audio at {aend}",
            name
        );
        assert!(
            (vfirst - afirst).abs() <= frame,
            "{}: video starts at {vfirst}, audio at {afirst}",
            name
        );

        // The same segments remuxed into one MP4: every frame, and the audio.
        let mp4 = dir.path().join(format!("{}.mp4", name));
        let report = remux_hls_to_mp4(&playlist, VideoCodec::H264, &mp4, Deadline::none()).unwrap();
        assert_eq!(report.frames, source.video.frames);
        let p = probe(&mp4, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(p.video.frames, source.video.frames);
        let audio = p.audio.expect("audio");
        assert!(
            (audio.duration_seconds - p.video.duration_seconds).abs() <= frame + 0.03,
            "{}: audio {} s, video {} s",
            name,
            audio.duration_seconds,
            p.video.duration_seconds
        );
    }
}
