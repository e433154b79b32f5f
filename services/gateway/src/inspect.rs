//! Untrusted chunks are parsed in a child process, never in the gateway itself.
//!
//! The child (`vtx inspect-chunk`, the same binary) runs under an address-space limit
//! (`RLIMIT_AS`, `VTX_INSPECT_MEMORY_BYTES`), a CPU-time limit and the check's deadline, set
//! between `fork` and `exec` so they hold before the first byte is read. A decoder that
//! allocates without bound or crashes on a hostile chunk ends only the child; the upload gets
//! a 422 and the gateway's own memory never holds a decoded frame.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vtx_domain::live_ingest::{ChunkEncode, InstantPolicy};
use vtx_media::{ChunkError, ChunkInfo, Limits};

use crate::error::ApiError;

/// The subcommand of `vtx` that the child runs.
pub const SUBCOMMAND: &str = "inspect-chunk";

/// How long one chunk check may take, wall clock; the child's CPU limit is the same.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What the child reports on its standard output, as one JSON document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Chunk {
        info: ChunkInfo,
        /// Asked for with `--instant`: the chunk remuxed as it is, or why it cannot be.
        instant: Option<Instant>,
    },
    /// Refused with a stable code (422).
    Refused { code: String, message: String },
    /// Not the chunk's fault (a bug, or the machine).
    Failed { message: String },
    /// The answer to `--ready`: the address space the child holds once started (the binary
    /// and its libraries), in bytes.
    Ready { address_space: u64 },
}

/// A standard chunk remuxed without re-encoding (its HLS files under the directory the
/// gateway gave), or why the chunk is not a standard input.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instant {
    Remuxed(ChunkEncode),
    NotStandard(String),
}

/// What the gateway asks of a check besides the verdict: remux the chunk into `out_dir` if it
/// is a standard input under `policy` (and take the video's cover from it, for chunk 0).
pub struct InstantRequest<'a> {
    pub policy: &'a InstantPolicy,
    pub out_dir: &'a Path,
    pub cover: bool,
}

/// Runs chunk checks in child processes.
#[derive(Clone, Debug)]
pub struct Inspector {
    program: PathBuf,
    /// What a check may allocate beyond the program itself.
    budget: u64,
    /// The child's address-space limit: what the program holds once started, plus `budget`.
    address_space: u64,
    limits: Limits,
}

impl Inspector {
    /// Checks with `program inspect-chunk` (`None`: this process's own executable, which is
    /// `vtx`), each child allowed `budget` bytes of address space beyond what the program
    /// holds once started (measured here, by starting one child: a gateway whose checker
    /// cannot run fails at start rather than refusing every chunk).
    pub async fn start(
        program: Option<PathBuf>,
        budget: u64,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let program = match program {
            Some(p) => p,
            None => std::env::current_exe()?,
        };
        let mut inspector = Self {
            program,
            budget,
            address_space: u64::MAX,
            limits,
        };
        let base = match inspector.run(&["--ready".as_ref()]).await? {
            Outcome::Verdict(Verdict::Ready { address_space }) => address_space,
            other => anyhow::bail!(
                "{} {SUBCOMMAND} does not start: {other:?}",
                inspector.program.display(),
            ),
        };
        inspector.address_space = base.saturating_add(budget);
        Ok(inspector)
    }

    /// The limits every chunk is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks the chunk at `path`: its facts (and with `instant`, the chunk remuxed as it is
    /// or why it cannot be), or the refusal the client gets.
    pub async fn inspect(
        &self,
        path: &Path,
        instant: Option<InstantRequest<'_>>,
    ) -> Result<(ChunkInfo, Option<Instant>), ApiError> {
        let limits =
            serde_json::to_string(&LimitsArg::from(&self.limits)).map_err(ApiError::internal)?;
        let check: Vec<std::ffi::OsString> =
            vec!["--limits".into(), limits.into(), path.as_os_str().into()];
        let mut outcome = None;
        if let Some(req) = instant {
            let mut args = check.clone();
            args.push("--instant".into());
            args.push(
                serde_json::to_string(req.policy)
                    .map_err(ApiError::internal)?
                    .into(),
            );
            args.push(req.out_dir.as_os_str().into());
            if req.cover {
                args.push("--cover".into());
            }
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            match self.run(&args).await.map_err(ApiError::internal)? {
                verdict @ Outcome::Verdict(_) => outcome = Some(verdict),
                // The remux (or the cover's decode) ended the child: the chunk itself is judged
                // again without it, so that instant publish never refuses a good chunk.
                other => tracing::warn!(
                    ?other,
                    "the chunk check died while remuxing; checking again without"
                ),
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let args: Vec<&std::ffi::OsStr> = check.iter().map(|a| a.as_os_str()).collect();
                self.run(&args).await.map_err(ApiError::internal)?
            }
        };
        let unprocessable = |code: &'static str, message: String| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
        };
        match outcome {
            Outcome::Verdict(Verdict::Chunk { info, instant }) => Ok((info, instant)),
            Outcome::Verdict(Verdict::Refused { code, message }) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                stable(&code),
                message,
            )),
            Outcome::Verdict(Verdict::Failed { message }) => Err(ApiError::internal(
                anyhow::anyhow!("chunk check: {message}"),
            )),
            Outcome::Verdict(Verdict::Ready { .. }) => Err(ApiError::internal(anyhow::anyhow!(
                "chunk check answered as if asked whether it is ready"
            ))),
            Outcome::TimedOut => Err(unprocessable(
                "transcode-timeout",
                format!("checking the chunk took over {} s", TIMEOUT.as_secs()),
            )),
            Outcome::OutOfMemory => Err(unprocessable(
                "too-large",
                format!(
                    "checking the chunk needed more than {} MiB",
                    self.budget >> 20
                ),
            )),
            Outcome::Died(how) => {
                tracing::warn!(chunk = %path.display(), %how, "the chunk check died on a chunk");
                Err(unprocessable(
                    "chunk-not-media",
                    "the chunk could not be parsed (its parser stopped)".into(),
                ))
            }
        }
    }

    async fn run(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<Outcome> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg(SUBCOMMAND)
            .args(args)
            // The child sees none of the gateway's settings (database, storage, token secrets).
            .env_clear()
            // Every thread allocates from the one main arena: a second arena would reserve
            // 64 MiB of address space at once.
            .env("MALLOC_ARENA_MAX", "1")
            .env("VTX_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory = self.address_space;
        let cpu = TIMEOUT.as_secs() + 1;
        // SAFETY: between fork and exec only async-signal-safe calls (setrlimit).
        unsafe {
            cmd.pre_exec(move || {
                limit(libc::RLIMIT_AS, memory)?;
                limit(libc::RLIMIT_CPU, cpu)?;
                limit(libc::RLIMIT_CORE, 0)
            });
        }
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!("starting {} {SUBCOMMAND}: {e}", self.program.display())
        })?;
        let Ok(output) =
            tokio::time::timeout(TIMEOUT + Duration::from_secs(5), child.wait_with_output()).await
        else {
            // kill_on_drop has ended the child.
            return Ok(Outcome::TimedOut);
        };
        let output = output?;
        if let Ok(verdict) = serde_json::from_slice::<Verdict>(&output.stdout) {
            return Ok(Outcome::Verdict(verdict));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        Ok(match output.status.signal() {
            Some(libc::SIGXCPU) | Some(libc::SIGKILL) => Outcome::TimedOut,
            // Rust's allocation failure message, or a panic on a failed FFmpeg allocation.
            _ if stderr.contains("memory allocation of") || stderr.contains("panicked") => {
                Outcome::OutOfMemory
            }
            _ => Outcome::Died(format!(
                "{} ({})",
                output.status,
                stderr.lines().last().unwrap_or_default()
            )),
        })
    }
}

#[derive(Debug)]
enum Outcome {
    Verdict(Verdict),
    TimedOut,
    OutOfMemory,
    Died(String),
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a plain system call on a struct that lives across it.
    if unsafe { libc::setrlimit(resource, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The code a child answered with, as the gateway's own: the chunk check's two, or a media
/// error's (anything else is a bug, shown as a parse refusal).
fn stable(code: &str) -> &'static str {
    match code {
        "chunk-not-gop-aligned" => "chunk-not-gop-aligned",
        _ => code
            .parse::<vtx_domain::ErrorCode>()
            .map_or("chunk-not-media", vtx_domain::ErrorCode::as_str),
    }
}

/// The limits as the child reads them.
#[derive(Serialize, Deserialize)]
struct LimitsArg {
    max_seconds: f64,
    max_pixels: u64,
    max_file_bytes: u64,
    max_frames: u64,
}

impl From<&Limits> for LimitsArg {
    fn from(l: &Limits) -> Self {
        Self {
            max_seconds: l.max_duration.as_secs_f64(),
            max_pixels: l.max_pixels,
            max_file_bytes: l.max_file_bytes,
            max_frames: l.max_frames,
        }
    }
}

impl From<LimitsArg> for Limits {
    fn from(l: LimitsArg) -> Self {
        Self {
            max_duration: Duration::from_secs_f64(l.max_seconds.max(0.0)),
            max_pixels: l.max_pixels,
            max_file_bytes: l.max_file_bytes,
            max_frames: l.max_frames,
        }
    }
}

/// The child's side: `vtx inspect-chunk --limits JSON PATH` (or `--ready`). Prints one
/// [`Verdict`] and exits 0; a crash or the memory limit ends it otherwise.
pub fn child(args: &[String]) -> std::process::ExitCode {
    // The default panic hook allocates (a backtrace, the working directory): at the memory
    // limit that deadlocks on the backtrace lock. A fixed line, then abort.
    std::panic::set_hook(Box::new(|_| {
        use std::io::Write;
        let _ = std::io::stderr().write_all(b"vtx inspect-chunk: panicked\n");
        std::process::abort();
    }));
    let verdict = match args {
        [flag] if flag == "--ready" => Verdict::Ready {
            address_space: address_space().unwrap_or(0),
        },
        [flag, limits, path, rest @ ..] if flag == "--limits" => {
            let instant = match rest {
                [] => Ok(None),
                [flag, policy, out, cover @ ..]
                    if flag == "--instant" && (cover.is_empty() || cover == ["--cover"]) =>
                {
                    serde_json::from_str::<InstantPolicy>(policy)
                        .map(|p| Some((p, Path::new(out), !cover.is_empty())))
                        .map_err(|e| format!("bad instant policy: {e}"))
                }
                _ => Err(format!("unexpected arguments {rest:?}")),
            };
            let limits =
                serde_json::from_str::<LimitsArg>(limits).map_err(|e| format!("bad limits: {e}"));
            match (limits, instant) {
                (Ok(limits), Ok(instant)) => judge(Path::new(path), &limits.into(), instant),
                (Err(message), _) | (_, Err(message)) => Verdict::Failed { message },
            }
        }
        _ => Verdict::Failed {
            message: format!(
                "usage: vtx {SUBCOMMAND} --limits JSON PATH [--instant POLICY DIR [--cover]] | --ready"
            ),
        },
    };
    println!(
        "{}",
        serde_json::to_string(&verdict).expect("a verdict serialises")
    );
    std::process::ExitCode::SUCCESS
}

/// This process's address space (`VmSize`), in bytes.
fn address_space() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn judge(path: &Path, limits: &Limits, instant: Option<(InstantPolicy, &Path, bool)>) -> Verdict {
    let deadline = vtx_media::Deadline::after(TIMEOUT);
    match vtx_media::inspect_chunk(path, limits, deadline) {
        Ok(info) => Verdict::Chunk {
            info,
            instant: instant.map(|(policy, out, cover)| {
                match remux_standard(path, limits, &policy, out, cover, deadline) {
                    Ok(Ok(encoded)) => Instant::Remuxed(encoded),
                    Ok(Err(why)) => Instant::NotStandard(why),
                    Err(e) => Instant::NotStandard(e.to_string()),
                }
            }),
        },
        Err(e) => refusal(e),
    }
}

/// The chunk remuxed into `out` (with `cover.jpg` when asked) if it is a standard input.
fn remux_standard(
    path: &Path,
    limits: &Limits,
    policy: &InstantPolicy,
    out: &Path,
    cover: bool,
    deadline: vtx_media::Deadline,
) -> Result<Result<ChunkEncode, String>, vtx_media::MediaError> {
    if let Err(why) = vtx_media::standard_chunk(path, policy, limits, deadline)? {
        return Ok(Err(why));
    }
    let encoded = vtx_media::remux_chunk(path, out, limits, deadline)?;
    if cover {
        vtx_media::write_cover(path, &out.join("cover.jpg"), deadline)?;
    }
    Ok(Ok(encoded))
}

/// `strerror(ENOMEM)`, as FFmpeg's messages carry it.
const ENOMEM_TEXT: &str = "Cannot allocate memory";

fn refusal(e: ChunkError) -> Verdict {
    let refused = |code: &str, e: &dyn std::fmt::Display| Verdict::Refused {
        code: code.to_string(),
        message: e.to_string(),
    };
    match &e {
        ChunkError::NotGopAligned => refused("chunk-not-gop-aligned", &e),
        ChunkError::NotMedia(_) => refused("chunk-not-media", &e),
        // FFmpeg reports a failed allocation as ENOMEM, which may reach us inside another
        // error's text: under the limit, the chunk asked for more memory than allowed.
        _ if matches!(&e, ChunkError::Media(m) if m.is_out_of_memory())
            || e.to_string().contains(ENOMEM_TEXT) =>
        {
            Verdict::Refused {
                code: "too-large".into(),
                message: format!("checking the chunk ran out of memory ({e})"),
            }
        }
        ChunkError::Media(m) => match m.code() {
            vtx_domain::ErrorCode::Internal => Verdict::Failed {
                message: m.to_string(),
            },
            code => refused(code.as_str(), m),
        },
    }
}
