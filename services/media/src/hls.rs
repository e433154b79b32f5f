//! Bitrates of HLS media playlists written to disk (the master playlist is rendered by
//! `vtx_domain::hls::master_playlist`).

use std::path::Path;

use vtx_domain::hls::MediaPlaylist;

use crate::MediaError;
pub use vtx_domain::hls::{Variant, master_playlist};

/// Peak and average bitrate of a media playlist's segments (bits per second), from the
/// segment files' sizes and their EXTINF durations.
pub fn playlist_bitrates(playlist: &Path) -> Result<(u64, u64), MediaError> {
    let dir = playlist.parent().unwrap_or(Path::new("."));
    let list = MediaPlaylist::parse(&std::fs::read_to_string(playlist)?);
    let init = list
        .init()
        .map(|uri| {
            std::fs::metadata(dir.join(uri))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let mut segments = Vec::with_capacity(list.segments.len());
    for segment in &list.segments {
        let bytes = std::fs::metadata(dir.join(&segment.uri))?.len();
        segments.push((bytes, segment.seconds.unwrap_or(0.0)));
    }
    Ok(vtx_domain::hls::bitrates(init, segments))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_lists_every_attribute() {
        let m = master_playlist(&[Variant {
            uri: "360p/index.m3u8".into(),
            width: 640,
            height: 360,
            frame_rate: 25.0,
            codecs: "avc1.64001E,mp4a.40.2".into(),
            peak_bitrate: 900_000,
            average_bitrate: 700_000,
        }]);
        assert!(m.starts_with("#EXTM3U\n"));
        assert!(m.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=700000,RESOLUTION=640x360,FRAME-RATE=25.000,CODECS=\"avc1.64001E,mp4a.40.2\"\n360p/index.m3u8\n"
        ));
    }

    #[test]
    fn bitrates_come_from_segment_sizes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init.mp4"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("a.m4s"), vec![0u8; 250_000]).unwrap();
        std::fs::write(dir.path().join("b.m4s"), vec![0u8; 50_000]).unwrap();
        let pl = dir.path().join("index.m3u8");
        std::fs::write(
            &pl,
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\na.m4s\n#EXTINF:1.000000,\nb.m4s\n#EXT-X-ENDLIST\n",
        )
        .unwrap();
        let (peak, avg) = playlist_bitrates(&pl).unwrap();
        assert_eq!(peak, 1_000_000);
        assert_eq!(avg, (301_000.0f64 * 8.0 / 3.0).ceil() as u64);
    }
}
