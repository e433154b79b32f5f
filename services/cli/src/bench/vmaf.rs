//! VMAF for the benches: Netflix's `vmaf` tool (libvmaf 2.3.1, model `vmaf_v0.6.1`, built by
//! deploy/local/setup.sh from the libvmaf source the crates.io crate `libvmaf-sys` vendors),
//! fed by the ffmpeg command line. Debian's FFmpeg has no `libvmaf` filter.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The `vmaf` tool: `VTX_VMAF`, else the one setup builds under `.vtx/vmaf`; `None` when
/// neither is there (the benches then leave VMAF out).
pub(super) fn tool() -> Option<PathBuf> {
    std::env::var_os("VTX_VMAF")
        .map(PathBuf::from)
        .or_else(|| {
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.vtx/vmaf/bin/vmaf"))
        })
        .filter(|p| p.is_file())
}

/// Mean VMAF of `distorted` against `reference`, the reference scaled (bicubic) to the
/// distorted frames' `size`, as `vtx_media::measure` scales it for PSNR and SSIM. Frames are
/// paired in order. `None` without the tool.
pub(super) fn vmaf(
    reference: &Path,
    distorted: &Path,
    size: (u32, u32),
) -> anyhow::Result<Option<f64>> {
    let Some(tool) = tool() else {
        return Ok(None);
    };
    let json = distorted.with_extension("vmaf.json");
    // Both decodes stream into the tool through pipes: no raw video on disk.
    let script = r#"exec "$1" -q --threads 2 --model version=vmaf_v0.6.1 --json -o "$5" \
        -r <(ffmpeg -nostdin -loglevel error -i "$2" -vf "scale=$4:flags=bicubic,format=yuv420p" -f yuv4mpegpipe -) \
        -d <(ffmpeg -nostdin -loglevel error -i "$3" -vf format=yuv420p -f yuv4mpegpipe -)"#;
    let out = Command::new("bash")
        .args(["-c", script, "vmaf"])
        .arg(&tool)
        .arg(reference)
        .arg(distorted)
        .arg(format!("{}:{}", size.0, size.1))
        .arg(&json)
        .output()
        .context("running vmaf")?;
    if !out.status.success() {
        bail!(
            "vmaf failed on {}: {}",
            distorted.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let _ = std::fs::remove_file(&json);
    report["pooled_metrics"]["vmaf"]["mean"]
        .as_f64()
        .map(Some)
        .context("no pooled VMAF in the tool's report")
}
