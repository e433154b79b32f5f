//! Outputs checked from the outside, with ffprobe, against the source they came from: every
//! frame at its source time, audio starting and ending where the source's does (relative to the
//! video), HLS `EXTINF` sums, and every HLS segment starting on a keyframe.

use std::path::Path;
use std::process::Command;

/// What ffprobe reads of a file's first video and first audio stream (packets an edit list
/// hides left out). Times in seconds on the file's own clock.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Presentation times of the video frames, in order.
    pub frames: Vec<f64>,
    /// End of the last frame (its time plus its duration).
    pub video_end: f64,
    /// First audible sample and the audio's end.
    pub audio: Option<(f64, f64)>,
    /// One audio frame (the longest audio packet).
    pub audio_frame: f64,
}

impl Timeline {
    /// One frame at the video's average rate.
    pub fn frame(&self) -> f64 {
        (self.video_end - self.frames[0]) / self.frames.len().max(1) as f64
    }

    pub fn video_seconds(&self) -> f64 {
        self.video_end - self.frames[0]
    }
}

fn num(v: &serde_json::Value) -> Option<f64> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Reads `path` (a file, or a local HLS playlist) with ffprobe.
pub fn timeline(path: &Path) -> Timeline {
    // +genpts: an AVI stores no presentation time for frames that B-frames follow.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-fflags", "+genpts", "-show_entries"])
        .arg("stream=index,codec_type:packet=stream_index,pts_time,duration_time,flags")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let first = |kind: &str| {
        v["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["index"].as_i64())
    };
    let (vi, ai) = (first("video").expect("a video stream"), first("audio"));
    // (time, duration) of the shown packets of one stream.
    let shown = |index: i64| -> Vec<(f64, Option<f64>)> {
        v["packets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["stream_index"].as_i64() == Some(index))
            .filter(|p| !p["flags"].as_str().unwrap_or("").contains('D'))
            .filter_map(|p| Some((num(&p["pts_time"])?, num(&p["duration_time"]))))
            .collect()
    };
    let video = shown(vi);
    let mut frames: Vec<f64> = video.iter().map(|p| p.0).collect();
    frames.sort_by(f64::total_cmp);
    assert!(!frames.is_empty(), "{}: no video frames", path.display());
    // A frame without a duration (an MP4's last sample may have none) lasts as long as the
    // typical frame.
    let mut gaps: Vec<f64> = frames.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let typical = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    let video_end = video
        .iter()
        .map(|(t, d)| t + d.filter(|d| *d > 0.0).unwrap_or(typical))
        .fold(f64::MIN, f64::max);
    let (audio, audio_frame) = match ai.map(shown).filter(|a| !a.is_empty()) {
        Some(a) => {
            let start = a.iter().map(|p| p.0).fold(f64::MAX, f64::min);
            let end = a
                .iter()
                .map(|(t, d)| t + d.unwrap_or(0.0))
                .fold(f64::MIN, f64::max);
            let frame = a.iter().filter_map(|p| p.1).fold(0.0, f64::max);
            (Some((start, end)), frame)
        }
        None => (None, 0.0),
    };
    Timeline {
        frames,
        video_end,
        audio,
        audio_frame,
    }
}

/// Asserts that `output` shows every frame of `source` at the source's time (within one frame,
/// counted from the first frame), ends within a frame of it, and that its audio starts and ends
/// where the source's does relative to the video (within one audio frame).
pub fn assert_same_times(source: &Path, output: &Path, what: &str) {
    let (src, out) = (timeline(source), timeline(output));
    assert_same_timeline(&src, &out, what);
}

/// As [`assert_same_times`], on timelines already read.
pub fn assert_same_timeline(src: &Timeline, out: &Timeline, what: &str) {
    assert_same_timeline_within(src, out, 0.0, what);
}

/// As [`assert_same_timeline`], allowing the audio to start `priming` seconds earlier: CMAF
/// segments carry no edit list, so the AAC encoder's priming frame shows there as audio one
/// frame before the first audible sample (players place and play it as silence).
fn assert_same_timeline_within(src: &Timeline, out: &Timeline, priming: f64, what: &str) {
    assert_eq!(out.frames.len(), src.frames.len(), "{what}: frame count");
    let frame = src.frame() + 1e-3;
    let (s0, o0) = (src.frames[0], out.frames[0]);
    // Frames keep their source times: only rounding to an output clock moves them, far less
    // than half a frame (re-timing to a nominal rate would move them by more).
    for (i, (s, o)) in src.frames.iter().zip(&out.frames).enumerate() {
        assert!(
            ((o - o0) - (s - s0)).abs() <= src.frame() / 2.0,
            "{what}: frame {i} at {:.4} s, the source's at {:.4} s",
            o - o0,
            s - s0
        );
    }
    assert!(
        (out.video_seconds() - src.video_seconds()).abs() <= frame,
        "{what}: video lasts {:.4} s, the source's {:.4} s",
        out.video_seconds(),
        src.video_seconds()
    );
    let Some((sa, sb)) = src.audio else {
        return;
    };
    let (oa, ob) = out
        .audio
        .unwrap_or_else(|| panic!("{what}: the audio is missing"));
    let audio_frame = src.audio_frame.max(out.audio_frame) + 1e-3;
    let early = (sa - s0) - (oa - o0);
    assert!(
        early <= audio_frame + priming && -early <= audio_frame,
        "{what}: audio starts at {:+.4} s from the first frame, the source's at {:+.4} s",
        oa - o0,
        sa - s0
    );
    assert!(
        ((ob - out.video_end) - (sb - src.video_end)).abs() <= audio_frame + frame,
        "{what}: audio ends {:+.4} s from the video's end, the source's {:+.4} s",
        ob - out.video_end,
        sb - src.video_end
    );
}

/// The init segments and media segments a media playlist names, and the sum of its `EXTINF`s.
pub fn playlist(text: &str) -> (Vec<String>, Vec<String>, f64) {
    let list = vtx_domain::hls::MediaPlaylist::parse(text);
    let sum = list
        .segments
        .iter()
        .map(|s| s.seconds.expect("EXTINF"))
        .sum();
    let segments = list.segments.into_iter().map(|s| s.uri).collect();
    (list.inits, segments, sum)
}

/// Asserts that a local HLS media playlist (`dir/index.m3u8` with its files beside it) has the
/// source's times (as [`assert_same_times`]), `EXTINF`s that sum to the source's video length
/// (within a frame), and that each of its segments starts on a keyframe.
pub fn assert_hls_like_source(source: &Path, playlist_path: &Path, what: &str) {
    let (src, out) = (timeline(source), timeline(playlist_path));
    assert_same_timeline_within(&src, &out, out.audio_frame, what);
    let dir = playlist_path.parent().expect("a directory");
    let text = std::fs::read_to_string(playlist_path).expect("playlist");
    let (_, segments, sum) = playlist(&text);
    assert!(
        (sum - src.video_seconds()).abs() <= src.frame() + 2e-3,
        "{what}: EXTINF sum {sum:.4} s, the source's video {:.4} s",
        src.video_seconds()
    );
    // Each segment after the init segment it follows (EXT-X-MAP applies until the next one).
    let mut init = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#EXT-X-MAP:") {
            init = rest
                .split("URI=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let mut bytes = std::fs::read(dir.join(init.expect("an init segment first"))).unwrap();
            bytes.extend(std::fs::read(dir.join(line.trim())).expect("segment"));
            let tmp = tempfile_path(dir, "seg-check.mp4");
            std::fs::write(&tmp, bytes).unwrap();
            let out = Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-select_streams",
                    "v:0",
                    "-read_intervals",
                    "%+#1",
                ])
                .args(["-show_entries", "packet=flags", "-of", "csv=p=0"])
                .arg(&tmp)
                .output()
                .expect("ffprobe runs");
            let _ = std::fs::remove_file(&tmp);
            let flags = String::from_utf8_lossy(&out.stdout);
            assert!(
                flags.lines().next().is_some_and(|f| f.contains('K')),
                "{what}: segment {} starts with a {flags:?} packet, not a keyframe",
                line.trim()
            );
        }
    }
    assert!(!segments.is_empty(), "{what}: no segments");
}

fn tempfile_path(dir: &Path, name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
