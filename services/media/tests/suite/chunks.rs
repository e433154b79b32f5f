//! Upload chunks: a file cut into GOP-aligned MPEG-TS chunks, each checked alone, concatenated
//! back into the whole video.

use std::io::Write;

use vtx_media::{ChunkError, Deadline, Limits, cut_chunks, inspect_chunk, probe};
use vtx_testkit::{gop_bframes, media};

#[test]
fn chunks_hold_whole_gops_and_concatenate_into_every_frame() {
    let src = gop_bframes(); // keyframe every second, B-frames
    let source = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chunks = cut_chunks(&src, dir.path(), 2.0, Deadline::none()).unwrap();
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());

    let mut whole = Vec::new();
    let mut frames = 0;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        let info = inspect_chunk(&c.path, &Limits::default(), Deadline::none()).unwrap();
        assert!(info.has_audio);
        assert!(info.keyframes >= 1);
        // Each chunk's video runs from its keyframe to the next chunk's.
        assert!(
            (info.start_seconds - c.start_seconds).abs() < 0.002,
            "{info:?} {c:?}"
        );
        assert!(
            (info.end_seconds - c.end_seconds).abs() < 0.002,
            "{info:?} {c:?}"
        );
        if i + 1 < chunks.len() {
            assert!((c.end_seconds - chunks[i + 1].start_seconds).abs() < 1e-9);
            assert!(c.end_seconds - c.start_seconds >= 2.0 - 1e-6);
        }
        frames += info.frames;
        whole.extend(std::fs::read(&c.path).unwrap());
    }
    assert_eq!(frames, source.video.frames);

    // Concatenated, the chunks are the video again: every frame, audio to the end.
    let joined = dir.path().join("joined.ts");
    std::fs::write(&joined, &whole).unwrap();
    let back = probe(&joined, &Limits::default(), Deadline::none()).unwrap();
    assert_eq!(back.container, "mpegts");
    assert_eq!(back.video.frames, source.video.frames);
    let frame = 1.0 / source.video.frame_rate;
    assert!((back.video.duration_seconds - source.video.duration_seconds).abs() <= frame);
    let audio = back.audio.expect("audio kept");
    let src_audio = source.audio.expect("source audio");
    assert!(
        (audio.duration_seconds - src_audio.duration_seconds).abs() < 0.05,
        "{} vs {}",
        audio.duration_seconds,
        src_audio.duration_seconds
    );

    // Cutting is deterministic, so a resumed upload sends the same bytes again.
    let again = tempfile::tempdir().unwrap();
    let second = cut_chunks(&src, again.path(), 2.0, Deadline::none()).unwrap();
    for (a, b) in chunks.iter().zip(&second) {
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
    }
}

#[test]
fn a_chunk_cut_inside_a_gop_or_not_mpegts_is_refused() {
    let src = gop_bframes();
    let dir = tempfile::tempdir().unwrap();
    let chunks = cut_chunks(&src, dir.path(), 2.0, Deadline::none()).unwrap();
    let bytes = std::fs::read(&chunks[1].path).unwrap();

    // The same chunk without its first half second or so: it starts mid-GOP.
    let packets = bytes.len() / 188;
    let cut = dir.path().join("mid-gop.ts");
    std::fs::write(&cut, &bytes[(packets / 4) * 188..]).unwrap();
    let err = inspect_chunk(&cut, &Limits::default(), Deadline::none()).unwrap_err();
    assert!(matches!(err, ChunkError::NotGopAligned), "{err:?}");

    // A whole MP4 is media, but not a chunk.
    let err = inspect_chunk(&media("bikes.mp4"), &Limits::default(), Deadline::none()).unwrap_err();
    assert!(matches!(err, ChunkError::NotMedia(_)), "{err:?}");

    // Nor is text.
    let mut text = tempfile::NamedTempFile::new().unwrap();
    writeln!(text, "hello, this is not a video").unwrap();
    let err = inspect_chunk(text.path(), &Limits::default(), Deadline::none()).unwrap_err();
    assert!(matches!(err, ChunkError::NotMedia(_)), "{err:?}");
}

#[test]
fn an_open_gop_source_is_not_cut_into_chunks() {
    // Leading B-frames of an open GOP need the GOP before: a chunk boundary there would lose
    // them, so such a file is refused for chunking (the client then sends it whole over tus).
    let src = media("bikes.mp4");
    let open_gop = vtx_testkit::derived(
        "open-gop.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "25",
            "-bf",
            "3",
            "-x264-params",
            "open-gop=1:scenecut=0",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let err = cut_chunks(&open_gop, dir.path(), 2.0, Deadline::none()).unwrap_err();
    assert!(
        matches!(err, vtx_media::MediaError::NotChunkable(_)),
        "{err:?}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}

#[test]
fn a_chunk_that_switches_to_a_huge_picture_is_refused_before_any_decoding() {
    // Declared 320x240; after 4 s, 8192x8192 frames. The size is read from every packet's
    // headers, so neither the chunk check nor the probe lets it through to a decoder.
    let bomb = vtx_testkit::recordings::size_bomb();
    let err = inspect_chunk(&bomb, &Limits::default(), Deadline::none()).unwrap_err();
    assert!(
        matches!(err, ChunkError::Media(vtx_media::MediaError::TooLarge(ref m)) if m.contains("8192x8192")),
        "{err:?}"
    );
    let err = probe(&bomb, &Limits::default(), Deadline::none()).unwrap_err();
    assert_eq!(err.code(), vtx_domain::ErrorCode::TooLarge, "{err}");
}
