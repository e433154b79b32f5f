//! Master playlists that list renditions of more than one codec: a video's H.264 variants (the
//! live high tier) beside the extreme tier's HEVC/AV1 ones, so a player that decodes them picks
//! by `CODECS` and bandwidth among all of them. The two tiers live under different prefixes;
//! the master names the other tier's media playlists by relative URI. And the master playlist of
//! one tier: a variant per rendition with BANDWIDTH (peak segment bitrate), AVERAGE-BANDWIDTH,
//! RESOLUTION, FRAME-RATE and CODECS (RFC 6381).

use std::fmt::Write as _;

/// The name of a set of codecs (`hevc`, `av1`, `av1+hevc`): sorted, without repeats, joined by
/// `+`. Masters are stored and looked up under it.
pub fn codec_set<'a>(codecs: impl IntoIterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = codecs.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v.join("+")
}

/// Peak segment bitrate and average bitrate (bits per second) of a rendition: its init bytes
/// and its segments' (bytes, seconds), in order. The one place HLS bitrates are computed (a
/// packaged tier's playlists and a live-ingest tier's chunks both come here).
pub fn bitrates(init_bytes: u64, segments: impl IntoIterator<Item = (u64, f64)>) -> (u64, u64) {
    let (mut peak, mut bytes, mut secs) = (0f64, init_bytes, 0f64);
    for (b, s) in segments {
        bytes += b;
        secs += s;
        if s > 0.0 {
            peak = peak.max(b as f64 * 8.0 / s);
        }
    }
    let average = if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    };
    (peak.ceil() as u64, average.ceil() as u64)
}

/// What a media playlist names: its init segments (`#EXT-X-MAP`; one per chunk in a playlist
/// of chunks joined by discontinuities) and its media segments with their `#EXTINF` durations.
/// The one reader of media playlists in vtx.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaPlaylist {
    pub inits: Vec<String>,
    pub segments: Vec<SegmentRef>,
    /// Every file named, in the playlist's order.
    files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SegmentRef {
    pub uri: String,
    /// The `#EXTINF` duration before it, if there was a readable one.
    pub seconds: Option<f64>,
}

impl MediaPlaylist {
    pub fn parse(text: &str) -> Self {
        let mut out = MediaPlaylist::default();
        let mut seconds = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("#EXT-X-MAP:") {
                if let Some(uri) = rest
                    .split("URI=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                {
                    out.inits.push(uri.to_string());
                    out.files.push(uri.to_string());
                }
            } else if let Some(d) = line.strip_prefix("#EXTINF:") {
                seconds = d.split(',').next().and_then(|x| x.trim().parse().ok());
            } else if !line.is_empty() && !line.starts_with('#') {
                out.files.push(line.to_string());
                out.segments.push(SegmentRef {
                    uri: line.to_string(),
                    seconds: seconds.take(),
                });
            }
        }
        out
    }

    /// The (first) init segment.
    pub fn init(&self) -> Option<&str> {
        self.inits.first().map(String::as_str)
    }

    /// Every file the playlist names, in its order (init segments and media segments).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The sum of the segments' durations.
    pub fn seconds(&self) -> f64 {
        self.segments.iter().filter_map(|s| s.seconds).sum()
    }
}

/// One `#EXT-X-STREAM-INF` entry: its attribute line and its URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub inf: String,
    pub uri: String,
}

/// The variants of a master playlist, in order.
pub fn variants(master: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut inf: Option<&str> = None;
    for line in master.lines().map(str::trim) {
        if line.starts_with("#EXT-X-STREAM-INF:") {
            inf = Some(line);
        } else if !line.is_empty()
            && !line.starts_with('#')
            && let Some(i) = inf.take()
        {
            out.push(Entry {
                inf: i.to_string(),
                uri: line.to_string(),
            });
        }
    }
    out
}

/// The URI that names object key `to` from a playlist whose key is in directory `from_dir`
/// (both keys of one bucket, `from_dir` ending in `/`).
pub fn relative_uri(from_dir: &str, to: &str) -> String {
    let from: Vec<&str> = from_dir.split('/').filter(|s| !s.is_empty()).collect();
    let target: Vec<&str> = to.split('/').collect();
    let common = from
        .iter()
        .zip(&target)
        .take_while(|(a, b)| a == b)
        .count()
        .min(target.len().saturating_sub(1));
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&target[common..]);
    parts.join("/")
}

/// A master playlist listing `base`'s variants (a master stored under `base_dir`) and then
/// `extra`'s (a master stored under `dir`, where this one is written), both as URIs relative
/// to `dir`.
pub fn combined_master(base: &str, base_dir: &str, extra: &[Entry], dir: &str) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for e in variants(base) {
        let uri = relative_uri(dir, &format!("{base_dir}{}", e.uri));
        s.push_str(&format!("{}\n{uri}\n", e.inf));
    }
    for e in extra {
        s.push_str(&format!("{}\n{}\n", e.inf, e.uri));
    }
    s
}

/// A rung's media playlist, as the master playlist lists it.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Path of the media playlist relative to the master playlist, e.g. "720p/index.m3u8".
    pub uri: String,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    /// Video codec string plus, when there is audio, "mp4a.40.2".
    pub codecs: String,
    pub peak_bitrate: u64,
    pub average_bitrate: u64,
}

/// Renders a master playlist, variants in the given order.
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = writeln!(
            s,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},FRAME-RATE={:.3},CODECS=\"{}\"\n{}",
            v.peak_bitrate.max(1),
            v.average_bitrate.max(1),
            v.width,
            v.height,
            v.frame_rate,
            v.codecs,
            v.uri
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_playlist_reads_back() {
        let pl = MediaPlaylist::parse(
            "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\na.m4s\n\
             #EXTINF:1.5,\nb.m4s\n#EXT-X-ENDLIST\n",
        );
        assert_eq!(pl.init(), Some("init.mp4"));
        assert_eq!(pl.files(), ["init.mp4", "a.m4s", "b.m4s"]);
        assert_eq!(pl.seconds(), 3.5);
        assert_eq!(pl.segments[1].seconds, Some(1.5));
        let joined = MediaPlaylist::parse(
            "#EXT-X-MAP:URI=\"0/init.mp4\"\n#EXTINF:2,\n0/a.m4s\n#EXT-X-DISCONTINUITY\n\
             #EXT-X-MAP:URI=\"1/init.mp4\"\n#EXTINF:2,\n1/a.m4s\n",
        );
        assert_eq!(
            joined.files(),
            ["0/init.mp4", "0/a.m4s", "1/init.mp4", "1/a.m4s"]
        );
    }

    const HIGH: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
        #EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS=\"avc1.64001E,mp4a.40.2\"\n360p/index.m3u8\n\
        #EXT-X-STREAM-INF:BANDWIDTH=3000000,CODECS=\"avc1.64001F,mp4a.40.2\"\n720p/index.m3u8\n";

    #[test]
    fn a_codec_set_is_named_the_same_whatever_the_order() {
        assert_eq!(codec_set(["hevc", "av1", "hevc"]), "av1+hevc");
        assert_eq!(codec_set(["av1"]), "av1");
        assert_eq!(codec_set([]), "");
    }

    #[test]
    fn variants_pair_each_stream_inf_with_its_uri() {
        let v = variants(HIGH);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].uri, "720p/index.m3u8");
        assert!(v[1].inf.contains("BANDWIDTH=3000000"));
    }

    #[test]
    fn relative_uris_climb_to_the_common_prefix() {
        assert_eq!(
            relative_uri(
                "videos/v/x/extreme/hls/",
                "videos/v/h/high/hls/720p/index.m3u8"
            ),
            "../../../h/high/hls/720p/index.m3u8"
        );
        assert_eq!(
            relative_uri("a/hls/", "a/hls/720p/index.m3u8"),
            "720p/index.m3u8"
        );
        assert_eq!(relative_uri("a/b/", "c.m3u8"), "../../c.m3u8");
    }

    #[test]
    fn the_combined_master_lists_both_tiers() {
        let extra = [Entry {
            inf: "#EXT-X-STREAM-INF:BANDWIDTH=600000,CODECS=\"hvc1.1.6.L93.B0,mp4a.40.2\"".into(),
            uri: "360p-hevc/index.m3u8".into(),
        }];
        let m = combined_master(
            HIGH,
            "videos/v/h/high/hls/",
            &extra,
            "videos/v/x/extreme/hls/",
        );
        let v = variants(&m);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].uri, "../../../h/high/hls/360p/index.m3u8");
        assert_eq!(v[2].uri, "360p-hevc/index.m3u8");
        assert!(m.starts_with("#EXTM3U\n"));
    }
}
