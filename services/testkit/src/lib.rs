//! Test inputs: the shared sample clips (`../shared/media` beside the checkout, or
//! `VTX_MEDIA_DIR`), and odd inputs derived from them with the ffmpeg command line (installed by
//! deploy/local/setup.sh), made once per target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod outside;
pub mod recordings;

/// A sample clip from shared/media (or `VTX_MEDIA_DIR`).
pub fn media(name: &str) -> PathBuf {
    let dir = std::env::var_os("VTX_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/media"));
    let p = dir.join(name);
    assert!(p.exists(), "sample clip {} missing", p.display());
    p
}

/// Where derived inputs are kept: `target/tmp/fixtures`, found from the running test binary
/// (`target/<profile>/deps/<test>`).
pub(crate) fn fixture_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.ancestors().nth(3).expect("target dir");
    let dir = target.join("tmp").join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    dir
}

/// An input made by `ffmpeg <args> <output>`, once: written under a temporary name first, so
/// parallel tests never see half a file.
pub fn derived(name: &str, args: &[&str]) -> PathBuf {
    let dir = fixture_dir();
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    // Unique per process and thread: tests in one binary run on parallel threads.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("mp4");
    let tmp = dir.join(format!("{}.{}-{n}.part.{ext}", name, std::process::id()));
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&tmp)
        .status()
        .expect("ffmpeg command line is installed by deploy/local/setup.sh");
    assert!(st.success(), "ffmpeg {args:?}");
    std::fs::rename(&tmp, &out).expect("fixture rename");
    out
}

/// `times` copies of a shared clip back to back, without re-encoding.
pub fn looped(clip: &str, times: u32) -> PathBuf {
    let src = media(clip);
    derived(
        &format!("{clip}-x{times}.mp4"),
        &[
            "-stream_loop",
            &(times - 1).to_string(),
            "-i",
            src.to_str().expect("utf-8 path"),
            "-c",
            "copy",
        ],
    )
}

/// 10.6 s, 640x360, keyframe every second, 3 B-frames, AAC audio.
pub fn gop_bframes() -> PathBuf {
    let src = media("bigbuckbunny.mp4");
    derived(
        "gop-bframes.mp4",
        &[
            "-stream_loop",
            "1",
            "-i",
            src.to_str().unwrap(),
            "-vf",
            "scale=640:360",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "25",
            "-bf",
            "3",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
        ],
    )
}

/// bikes.mp4 (640x272) with a display matrix turning it 90 degrees: shown 272x640.
pub fn rotated() -> PathBuf {
    let src = media("bikes.mp4");
    derived(
        "rotated.mp4",
        &[
            "-i",
            src.to_str().expect("utf-8 path"),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
        ],
    )
}

/// The shared 720p clip as a phone records it (a keyframe every second, AAC), scaled to 360p
/// and played twice back to back without re-encoding: the chunk holding the join probes as
/// variable rate while the others do not.
pub fn phone_like_twice() -> PathBuf {
    let src = media("bigbuckbunny.mp4");
    let once = derived(
        "bbb-phone.mp4",
        &[
            "-i",
            src.to_str().expect("utf-8 path"),
            "-vf",
            "scale=640:360",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-c:a",
            "copy",
        ],
    );
    derived(
        "bbb-phone-x2.mp4",
        &[
            "-stream_loop",
            "1",
            "-i",
            once.to_str().expect("utf-8 path"),
            "-c",
            "copy",
        ],
    )
}
