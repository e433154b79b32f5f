//! Transcoding while the upload arrives: what one chunk's fast-tier encode produced (stored
//! with the chunk), and how the chunks' HLS segments become one media playlist per rendition
//! when the upload completes. Completing writes only playlists, whose size follows the segment
//! count, never the video's bytes.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What an input must be to be published as it is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstantPolicy {
    /// Bits per second over a chunk, at most.
    pub max_bitrate: u64,
    /// Longest time between keyframes (and from the last one to the chunk's end), seconds: a
    /// player seeks and starts only at keyframes.
    pub max_gop_seconds: f64,
    /// Largest picture, long side and short side (the ladder's top rung: 1920 x 1080).
    pub max_long_side: u32,
    pub max_short_side: u32,
}

impl Default for InstantPolicy {
    fn default() -> Self {
        Self {
            max_bitrate: 8_000_000,
            max_gop_seconds: 5.0,
            max_long_side: 1920,
            max_short_side: 1080,
        }
    }
}

/// One HLS media segment of a chunk, relative to the chunk's directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub uri: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// One rendition of one chunk: its init segment and media segments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkRendition {
    pub name: String,
    pub codec: String,
    pub codec_string: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_seconds: f64,
    pub init: String,
    pub init_bytes: u64,
    pub segments: Vec<Segment>,
}

/// What a chunk's encode produced, and the facts of the chunk's video it was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkEncode {
    /// Time base of `start` and `end` (the chunk's own clock: MPEG-TS, 1/90000).
    pub time_base: (i32, i32),
    /// First shown frame and end of the last one.
    pub start: i64,
    pub end: i64,
    pub frames: u64,
    pub frame_rate: (i32, i32),
    pub display_width: u32,
    pub display_height: u32,
    pub has_audio: bool,
    pub renditions: Vec<ChunkRendition>,
    /// Frames of the chunk that could not be decoded and were concealed.
    #[serde(default)]
    pub concealed_video_frames: u64,
}

impl ChunkEncode {
    pub fn rendition(&self, name: &str) -> Option<&ChunkRendition> {
        self.renditions.iter().find(|r| r.name == name)
    }
}

/// Why the chunks of an upload cannot make one video together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that every chunk was encoded with the same picture (clock, size, audio) and the same
/// renditions as the first, so their segments play as one stream. The frame rate a chunk probes
/// at may differ (a phone records at a variable rate): every chunk keeps the upload's clock.
pub fn check_chunks(chunks: &[ChunkEncode]) -> Result<(), Mismatch> {
    let Some(first) = chunks.first() else {
        return Err(Mismatch("no chunks".into()));
    };
    let names = |c: &ChunkEncode| {
        c.renditions
            .iter()
            .map(|r| (r.name.clone(), r.width, r.height, r.codec_string.clone()))
            .collect::<Vec<_>>()
    };
    for (i, c) in chunks.iter().enumerate().skip(1) {
        let same = c.time_base == first.time_base
            && (c.display_width, c.display_height) == (first.display_width, first.display_height)
            && c.has_audio == first.has_audio
            && names(c) == names(first);
        if !same {
            return Err(Mismatch(format!(
                "chunk {i} ({}x{}, audio {}) differs from chunk 0 ({}x{}, audio {})",
                c.display_width,
                c.display_height,
                c.has_audio,
                first.display_width,
                first.display_height,
                first.has_audio
            )));
        }
    }
    Ok(())
}

/// The media playlist of rendition `name` over every chunk, in order: each chunk's segments
/// under its own directory (`c00003/…`), each chunk's init segment announced by `EXT-X-MAP`
/// before its segments. Timestamps run on from chunk to chunk (the segments keep the upload's
/// clock), so no discontinuity is signalled. `chunks` are (index, rendition).
pub fn media_playlist(chunks: &[(u32, &ChunkRendition)]) -> String {
    let target = chunks
        .iter()
        .flat_map(|(_, r)| r.segments.iter().map(|s| s.seconds))
        .fold(1.0f64, f64::max)
        .ceil() as u64;
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    for (index, r) in chunks {
        let _ = writeln!(s, "#EXT-X-MAP:URI=\"c{index:05}/{}\"", r.init);
        for seg in &r.segments {
            let _ = writeln!(s, "#EXTINF:{:.6},\nc{index:05}/{}", seg.seconds, seg.uri);
        }
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

/// One rendition of a tier made of chunks: its media playlist (relative to
/// `hls/<name>/index.m3u8` under the tier's prefix) and what its rendition row records.
#[derive(Clone, Debug, PartialEq)]
pub struct PackagedRendition {
    pub name: String,
    pub codec: String,
    pub codec_string: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub average_bitrate: u64,
    pub prefetch_bytes_3s: u64,
    pub playlist: String,
}

/// A tier made of chunks, packaged: every rendition's media playlist, the master playlist
/// (`hls/master.m3u8`) and the picture the video row records.
#[derive(Clone, Debug, PartialEq)]
pub struct PackagedTier {
    pub renditions: Vec<PackagedRendition>,
    pub master: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub seconds: f64,
}

/// Packages the chunks of a tier, (index, what the chunk produced) in order: checks that every
/// chunk is there and that they agree, and that each rendition holds every frame of the chunks
/// over their whole span, then writes the playlists (nothing is read or written but text).
pub fn package_chunks(chunks: &[(u32, ChunkEncode)]) -> Result<PackagedTier, Mismatch> {
    let all: Vec<ChunkEncode> = chunks.iter().map(|(_, e)| e.clone()).collect();
    check_chunks(&all)?;
    if let Some(i) = chunks
        .iter()
        .enumerate()
        .position(|(i, (idx, _))| *idx != i as u32)
    {
        return Err(Mismatch(format!("chunk {i} is missing")));
    }
    let first = &all[0];
    let frames: u64 = all.iter().map(|c| c.frames).sum();
    let tb = first.time_base;
    let span = all.last().map_or(0, |c| c.end) - first.start;
    let seconds = span as f64 * f64::from(tb.0) / f64::from(tb.1);
    let source = crate::plan::SourceTiming {
        frames,
        seconds,
        frame_seconds: f64::from(first.frame_rate.1) / f64::from(first.frame_rate.0),
    };
    let (mut renditions, mut variants) = (Vec::new(), Vec::new());
    for r0 in &first.renditions {
        let list: Vec<(u32, &ChunkRendition)> = chunks
            .iter()
            .filter_map(|(i, e)| e.rendition(&r0.name).map(|r| (*i, r)))
            .collect();
        let rs: Vec<&ChunkRendition> = list.iter().map(|(_, r)| *r).collect();
        let rung_frames: u64 = rs.iter().map(|r| r.frames).sum();
        let rung_seconds: f64 = rs.iter().map(|r| r.duration_seconds).sum();
        source
            .check(&r0.name, rung_frames, rung_seconds, rs.len())
            .map_err(Mismatch)?;
        let (peak, average) = bitrates(&rs);
        variants.push(crate::hls::Variant {
            uri: format!("{}/index.m3u8", r0.name),
            width: r0.width,
            height: r0.height,
            frame_rate: 1.0 / source.frame_seconds,
            codecs: if first.has_audio {
                format!("{},mp4a.40.2", r0.codec_string)
            } else {
                r0.codec_string.clone()
            },
            peak_bitrate: peak,
            average_bitrate: average,
        });
        renditions.push(PackagedRendition {
            name: r0.name.clone(),
            codec: r0.codec.clone(),
            codec_string: r0.codec_string.clone(),
            width: r0.width,
            height: r0.height,
            frames: rung_frames,
            seconds: rung_seconds,
            bytes: rs
                .iter()
                .map(|r| r.init_bytes + r.segments.iter().map(|s| s.bytes).sum::<u64>())
                .sum(),
            average_bitrate: average,
            prefetch_bytes_3s: prefetch_bytes(&rs, 3.0),
            playlist: media_playlist(&list),
        });
    }
    Ok(PackagedTier {
        renditions,
        master: crate::hls::master_playlist(&variants),
        width: first.display_width,
        height: first.display_height,
        frames,
        seconds,
    })
}

/// The files a media playlist names (init segments and media segments), relative to it.
pub fn playlist_files(playlist: &str) -> Vec<String> {
    crate::hls::MediaPlaylist::parse(playlist).files().to_vec()
}

/// Peak segment bitrate and average bitrate (bits per second) of a rendition over its chunks.
pub fn bitrates(chunks: &[&ChunkRendition]) -> (u64, u64) {
    crate::hls::bitrates(
        chunks.iter().map(|r| r.init_bytes).sum(),
        chunks
            .iter()
            .flat_map(|r| r.segments.iter().map(|s| (s.bytes, s.seconds))),
    )
}

/// Bytes a player fetches to show the first `seconds` of a rendition over HLS: the first init
/// segment and every segment that starts before `seconds`.
pub fn prefetch_bytes(chunks: &[&ChunkRendition], seconds: f64) -> u64 {
    let mut total = chunks.first().map_or(0, |r| r.init_bytes);
    let mut t = 0.0;
    for r in chunks {
        for s in &r.segments {
            if t >= seconds {
                return total;
            }
            total += s.bytes;
            t += s.seconds;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendition(segments: &[(f64, u64)]) -> ChunkRendition {
        ChunkRendition {
            name: "360p".into(),
            codec: "h264".into(),
            codec_string: "avc1.64001e".into(),
            width: 640,
            height: 360,
            frames: 50,
            duration_seconds: segments.iter().map(|s| s.0).sum(),
            init: "init.mp4".into(),
            init_bytes: 800,
            segments: segments
                .iter()
                .enumerate()
                .map(|(i, (secs, bytes))| Segment {
                    uri: format!("seg-{i:05}.m4s"),
                    seconds: *secs,
                    bytes: *bytes,
                })
                .collect(),
        }
    }

    #[test]
    fn playlist_lists_each_chunk_after_its_init() {
        let (a, b) = (
            rendition(&[(2.0, 100), (1.2, 50)]),
            rendition(&[(2.5, 100)]),
        );
        let pl = media_playlist(&[(0, &a), (1, &b)]);
        assert!(pl.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:3\n"));
        assert!(pl.contains(
            "#EXT-X-MAP:URI=\"c00000/init.mp4\"\n#EXTINF:2.000000,\nc00000/seg-00000.m4s\n#EXTINF:1.200000,\nc00000/seg-00001.m4s\n#EXT-X-MAP:URI=\"c00001/init.mp4\"\n#EXTINF:2.500000,\nc00001/seg-00000.m4s\n#EXT-X-ENDLIST\n"
        ));
        assert!(!pl.contains("DISCONTINUITY"));
        assert_eq!(
            playlist_files(&pl),
            [
                "c00000/init.mp4",
                "c00000/seg-00000.m4s",
                "c00000/seg-00001.m4s",
                "c00001/init.mp4",
                "c00001/seg-00000.m4s"
            ]
        );
    }

    #[test]
    fn bitrates_and_prefetch_follow_the_segments() {
        let (a, b) = (
            rendition(&[(2.0, 250_000), (2.0, 50_000)]),
            rendition(&[(1.0, 10_000)]),
        );
        let (peak, avg) = bitrates(&[&a, &b]);
        assert_eq!(peak, 1_000_000);
        assert_eq!(avg, ((311_600u64 * 8) as f64 / 5.0).ceil() as u64);
        assert_eq!(prefetch_bytes(&[&a, &b], 3.0), 800 + 250_000 + 50_000);
        assert_eq!(prefetch_bytes(&[&a, &b], 60.0), 800 + 310_000);
    }

    #[test]
    fn chunks_of_different_pictures_do_not_make_one_video() {
        let c = |w: u32| ChunkEncode {
            time_base: (1, 90_000),
            start: 0,
            end: 180_000,
            frames: 50,
            frame_rate: (25, 1),
            display_width: w,
            display_height: 360,
            has_audio: true,
            renditions: vec![rendition(&[(2.0, 1)])],
            concealed_video_frames: 0,
        };
        assert!(check_chunks(&[c(640), c(640)]).is_ok());
        let mut other_rate = c(640);
        other_rate.frame_rate = (30_000, 1001);
        assert!(
            check_chunks(&[c(640), other_rate]).is_ok(),
            "rates may vary"
        );
        assert!(
            check_chunks(&[c(640), c(480)])
                .unwrap_err()
                .0
                .contains("chunk 1")
        );
        assert!(check_chunks(&[]).is_err());
    }
}
