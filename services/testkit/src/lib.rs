//! Test inputs: the shared sample clips (`../shared/media` beside the checkout, or
//! `VTX_MEDIA_DIR`), and odd inputs derived from them with the ffmpeg command line (installed by
//! deploy/local/setup.sh), made once per target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

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
fn fixture_dir() -> PathBuf {
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
    let tmp = dir.join(format!("{}.{}.part.mp4", name, std::process::id()));
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
