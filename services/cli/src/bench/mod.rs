//! `vtx bench ...`: each bench in its own file, printing a Markdown table; the results and the
//! commands live in docs/benchmarks.md. Shared here: cost measurement, the ffmpeg command line,
//! the clips benches derive, child-process bookkeeping.

mod bd_rate;
mod extreme;
mod hotness;
mod live;
mod media;
mod pipeline;
mod publish_load;
mod quality;
mod stack;
mod status;
mod titled;
mod uploads;

pub use extreme::extreme;
pub use hotness::hotness;
pub use live::live;
pub use media::media;
pub use pipeline::pipeline;
pub use publish_load::publish_load;
pub use quality::quality;
use stack::BenchStack;
pub use status::status;
pub use uploads::uploads;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// Wall and CPU seconds (this process and its children) of one run.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
}

fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        total += tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    total
}

fn measure_cost<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Cost, T)> {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let out = f()?;
    Ok((
        Cost {
            wall: t0.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - c0,
        },
        out,
    ))
}

fn ffmpeg(args: &[String]) -> anyhow::Result<()> {
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .context("running the ffmpeg command line (deploy/local/setup.sh installs it)")?;
    if !st.success() {
        bail!("ffmpeg {args:?} failed");
    }
    Ok(())
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Netflix's `vmaf` tool: `VTX_VMAF_TOOL`, else the one deploy/local/setup.sh builds under
/// `.vtx/vmaf`; `None` (VMAF left out, with a word on stderr) when neither runs.
fn vmaf_tool() -> Option<PathBuf> {
    let path = std::env::var_os("VTX_VMAF_TOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.vtx/vmaf/bin/vmaf"));
    vtx_media::vmaf_tool(&path)
        .inspect_err(|e| eprintln!("no VMAF: {e}"))
        .ok()
}

/// A clip from the shared media folder beside the checkout.
fn shared_clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/media")
        .join(name)
}

/// The shared 720p Big Buck Bunny excerpt, `loops` times back to back (no re-encode), in `dir`.
fn looped_bbb(dir: &Path, loops: u32) -> anyhow::Result<PathBuf> {
    loop_clip(&shared_clip("bigbuckbunny.mp4"), dir, loops)
}

/// The shared 720p clip as a phone records it: re-encoded once with a keyframe every second
/// (the source has one per 5.28 s), audio copied.
fn phone_like_bbb(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("bbb-gop1s.mp4");
    if !out.exists() {
        ffmpeg(&[
            "-i".into(),
            shared_clip("bigbuckbunny.mp4")
                .to_string_lossy()
                .into_owned(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "veryfast".into(),
            "-crf".into(),
            "20".into(),
            "-g".into(),
            "25".into(),
            "-keyint_min".into(),
            "25".into(),
            "-sc_threshold".into(),
            "0".into(),
            "-c:a".into(),
            "copy".into(),
            out.to_string_lossy().into_owned(),
        ])?;
    }
    Ok(out)
}

/// The first `seconds` of `input` (video only, stream-copied) in `dir`; `input` itself when it
/// is not much longer (or `seconds` is 0).
fn first_seconds(input: &Path, seconds: f64, dir: &Path) -> anyhow::Result<PathBuf> {
    let full = vtx_media::probe(
        input,
        &vtx_media::Limits::default(),
        vtx_media::Deadline::none(),
    )?;
    if seconds <= 0.0 || full.video.duration_seconds <= seconds + 1.0 {
        return Ok(input.to_path_buf());
    }
    let stem = input
        .file_stem()
        .map_or("clip".into(), |s| s.to_string_lossy());
    let cut = dir.join(format!("{stem}-{seconds}s.mp4"));
    ffmpeg(&[
        "-i".into(),
        input.to_string_lossy().into_owned(),
        "-t".into(),
        seconds.to_string(),
        "-an".into(),
        "-c".into(),
        "copy".into(),
        cut.to_string_lossy().into_owned(),
    ])?;
    Ok(cut)
}

/// `clip` played `loops` times over, without re-encoding.
fn loop_clip(clip: &Path, dir: &Path, loops: u32) -> anyhow::Result<PathBuf> {
    let stem = clip
        .file_stem()
        .map_or("clip".into(), |s| s.to_string_lossy());
    let out = dir.join(format!("{stem}-x{loops}.mp4"));
    ffmpeg(&[
        "-stream_loop".into(),
        (loops - 1).to_string(),
        "-i".into(),
        clip.to_string_lossy().into_owned(),
        "-c".into(),
        "copy".into(),
        out.to_string_lossy().into_owned(),
    ])?;
    Ok(out)
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
