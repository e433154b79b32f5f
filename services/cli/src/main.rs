//! `vtx`: every service as a subcommand, plus the client commands. Thin: it reads
//! configuration, connects the adapters and hands them to the service crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vtx_domain::api::VideoView;
use vtx_domain::{JobId, VideoId};
use vtx_infra::{Config, telemetry};
use vtx_stack::{Resources, Roles, Stack};

#[derive(Parser)]
#[command(
    name = "vtx",
    version,
    about = "Distributed video transcoding for short-video upload"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations and create the bucket.
    Migrate,
    /// Run the upload gateway and status API.
    Gateway,
    /// Run the scheduler.
    Scheduler,
    /// Run a transcode worker.
    Worker,
    /// Run the hotness tracker: the most played videos (and predicted ones) get extreme
    /// encodes. Safe to run more than once: one acts, the others stand by.
    Hotness,
    /// Run every service in one process (local use).
    Up,
    /// Upload a video file as GOP-aligned chunks (resumable); prints the video id.
    Upload {
        file: PathBuf,
        /// Shortest chunk in seconds of video (chunks end at a keyframe).
        #[arg(long, default_value_t = 2.0)]
        chunk_seconds: f64,
        /// Chunks in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Send chunks at the video's real-time rate, as a phone still recording would.
        #[arg(long)]
        live: bool,
        /// Keep no resume state (by default a killed upload resumes when run again).
        #[arg(long)]
        no_resume: bool,
        /// Wait until the video is published or failed and print its status (exit codes: 0
        /// published, 2 failed, 3 still processing after --wait-timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 3600)]
        wait_timeout: u64,
        /// The uploader's follower count (a large one predicts a hot video: extreme encode).
        #[arg(long)]
        followers: Option<u64>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Transcode a file on this machine (no database, broker or S3): split, parallel slice
    /// encodes, merge into MP4 + HLS, cover and manifest.json in OUT.
    Transcode {
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// fast (x264 veryfast), high (x264 slow) or extreme (x265 slow + SVT-AV1).
        #[arg(long, default_value = "fast")]
        tier: vtx_media::Tier,
        /// Target slice length in seconds; 0 encodes the video as one slice.
        #[arg(long, default_value_t = 10.0)]
        slice_seconds: f64,
        /// Slices encoded at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// PNG drawn in the top-right corner of every rendition.
        #[arg(long)]
        watermark: Option<PathBuf>,
        /// Skip PSNR/SSIM measurement.
        #[arg(long)]
        no_quality: bool,
    },
    /// Benchmarks (print Markdown tables; results are kept in docs/benchmarks.md).
    #[command(subcommand)]
    Bench(Bench),
    /// Show a video's (or a job's) state and, once ready, its playback URLs.
    Status {
        id: String,
        /// Wait until the video is published or failed (exit codes as for `upload --wait`).
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 600)]
        wait_timeout: u64,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

/// Where the gateway is, and what its TLS certificate may be signed by.
#[derive(clap::Args)]
struct GatewayArgs {
    /// The gateway's base URL (`http://` or `https://`).
    #[arg(long, env = "VTX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// PEM certificates to trust besides the system's roots (a private CA, or the gateway's
    /// self-signed certificate). `SSL_CERT_FILE` also works.
    #[arg(long, env = "VTX_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Media engine: shared decode vs separate runs, vs the ffmpeg command line, slices vs
    /// monolithic. Without --input, loops the shared 720p clip to 32 s.
    Media {
        #[arg(long)]
        input: Option<PathBuf>,
        /// Parallel single-threaded slice workers for (c).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Upload gateway under load: concurrent sessions on loopback against a `vtx gateway`
    /// process; throughput, p99 chunk latency, the gateway's peak RSS.
    Uploads {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Chunks each session sends (2 s GOP-aligned chunks of a shared clip).
        #[arg(long, default_value_t = 5)]
        chunks: usize,
    },
    /// Bitrate saving of the extreme tier (HEVC, AV1) against the high tier at equal quality.
    Extreme {
        /// Clips to measure (default: the shared clips).
        inputs: Vec<PathBuf>,
        /// Skip the rate-quality curves: only time the fast tier beside extreme encodes.
        #[arg(long)]
        priority_only: bool,
    },
    /// Play ingest on one gateway process, and the top-x query over synthetic history.
    Hotness {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        senders: usize,
        #[arg(long, default_value_t = 20_000)]
        videos: u32,
        /// Minutes of per-minute history per video for the top-x query.
        #[arg(long, default_value_t = 1440)]
        minutes: u32,
    },
    /// `vtx upload --live` of a 60 s and a 5-minute clip: publish latency after the last chunk.
    Live {
        /// Uploads of the 60 s clip (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Uploads of the 5-minute clip.
        #[arg(long, default_value_t = 1)]
        long_runs: usize,
    },
    /// Distributed pipeline on the local services (own temporary database, queues and bucket
    /// prefix; real worker processes): publish latency by clip length, 1 vs 2 workers.
    Pipeline,
}

fn main() -> anyhow::Result<ExitCode> {
    // The gateway's chunk check, in a child process under its limits: no runtime, no logs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(vtx_gateway::inspect::SUBCOMMAND) {
        return Ok(vtx_gateway::inspect::child(&args[1..]));
    }
    // SVT-AV1 logs a banner and, since encoders open without the right to real-time threads
    // (vtx_media's `without_realtime`), a "Failed to set thread priority" warning per thread
    // at every open, on stderr beside our own logs: errors only unless the operator says
    // otherwise.
    if std::env::var_os("SVT_LOG").is_none() {
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var("SVT_LOG", "1") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<ExitCode> {
    telemetry::init();
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Upload {
            file,
            chunk_seconds,
            concurrency,
            live,
            no_resume,
            wait,
            wait_timeout,
            followers,
            gateway,
        } => {
            let opts = vtx_client::UploadOptions {
                chunk_seconds,
                concurrency,
                live,
                state_dir: if no_resume {
                    None
                } else {
                    vtx_client::UploadOptions::default_state_dir()
                },
                followers,
            };
            let wait = wait.then(|| Duration::from_secs(wait_timeout));
            return upload(file, opts, wait, gateway).await;
        }
        Command::Status {
            id,
            wait,
            wait_timeout,
            gateway,
        } => return status(id, wait.then(|| Duration::from_secs(wait_timeout)), gateway).await,
        Command::Bench(Bench::Pipeline) => bench::pipeline().await,
        Command::Bench(Bench::Live { runs, long_runs }) => bench::live(runs, long_runs).await,
        Command::Bench(Bench::Extreme {
            inputs,
            priority_only,
        }) => tokio::task::spawn_blocking(move || bench::extreme(inputs, priority_only)).await?,
        Command::Bench(Bench::Hotness {
            seconds,
            batch,
            senders,
            videos,
            minutes,
        }) => bench::hotness(seconds, batch, senders, videos, minutes).await,
        Command::Bench(Bench::Uploads { sessions, chunks }) => {
            bench::uploads(sessions, chunks).await
        }
        Command::Bench(Bench::Media { input, jobs }) => {
            tokio::task::spawn_blocking(move || bench::media(input, jobs)).await?
        }
        Command::Transcode {
            input,
            out,
            tier,
            slice_seconds,
            jobs,
            watermark,
            no_quality,
        } => {
            let mut req = vtx_media::PipelineRequest::new(input, out);
            req.tier = tier;
            req.slice_seconds = slice_seconds;
            req.jobs = jobs.unwrap_or(req.jobs);
            req.watermark = watermark;
            req.quality = !no_quality;
            tokio::task::spawn_blocking(move || transcode_local(req)).await?
        }
        server => serve(server).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

async fn serve(command: Command) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    tracing::debug!(?cfg, "configuration");
    let resources = Resources::connect(&cfg).await?;
    let roles = match command {
        Command::Migrate => {
            resources.prepare().await?;
            println!("migrations applied, bucket {} ready", cfg.s3.bucket);
            return Ok(());
        }
        Command::Gateway => Roles {
            gateway: true,
            ..Roles::default()
        },
        Command::Scheduler => Roles {
            scheduler: true,
            metrics_server: true,
            ..Roles::default()
        },
        Command::Worker => Roles {
            worker: true,
            metrics_server: true,
            ..Roles::default()
        },
        Command::Hotness => Roles {
            hotness: true,
            metrics_server: true,
            ..Roles::default()
        },
        Command::Up => {
            resources.prepare().await?;
            Roles::all()
        }
        Command::Upload { .. }
        | Command::Status { .. }
        | Command::Transcode { .. }
        | Command::Bench(_) => {
            unreachable!("client commands")
        }
    };
    let stack = Stack::start(&cfg, resources, roles).await?;
    if let Some(url) = stack.gateway_url() {
        println!("vtx gateway on {url}");
    }
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight work");
    stack.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the media pipeline locally with a progress line on the terminal.
fn transcode_local(mut req: vtx_media::PipelineRequest) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let last_stage = std::sync::Mutex::new(None);
    let started = std::time::Instant::now();
    req.progress = Some(std::sync::Arc::new(move |p: vtx_media::Progress| {
        let mut last = last_stage.lock().expect("lock");
        let new_stage = *last != Some(p.stage);
        if tty {
            let pct = if p.total > 0 {
                p.done as f64 * 100.0 / p.total as f64
            } else {
                0.0
            };
            eprint!(
                "\r{:>8?} {:>5.1}% ({}/{})   ",
                p.stage,
                pct.min(100.0),
                p.done,
                p.total
            );
            if p.stage == vtx_media::Stage::Done {
                eprintln!();
            }
        } else if new_stage {
            eprintln!("{:?}", p.stage);
        }
        *last = Some(p.stage);
    }));
    let out = req.out_dir.clone();
    let m = vtx_media::run_pipeline(&req)?;
    eprintln!(
        "{} slices, {} renditions in {:.1} s -> {}",
        m.slices,
        m.renditions.len(),
        started.elapsed().as_secs_f64(),
        out.join("manifest.json").display()
    );
    println!(
        "{:<12} {:>9} {:>7} {:>10} {:>8} {:>8} {:>12}",
        "rendition", "size", "frames", "kbit/s", "PSNR", "SSIM", "prefetch 3s"
    );
    for r in &m.renditions {
        println!(
            "{:<12} {:>9} {:>7} {:>10} {:>8} {:>8} {:>12}",
            r.name,
            format!("{}x{}", r.width, r.height),
            r.frames,
            r.bitrate / 1000,
            r.psnr.map_or("-".into(), |v| format!("{v:.2}")),
            r.ssim.map_or("-".into(), |v| format!("{v:.4}")),
            r.prefetch_bytes_3s
        );
    }
    Ok(())
}

/// A client with the service token from `VTX_SERVICE_TOKEN` or `.vtx/service-token`.
fn service_client(gateway: GatewayArgs) -> anyhow::Result<vtx_client::Client> {
    let cfg = Config::from_env()?;
    let token = cfg.auth.service_tokens.first().context(
        "no service token: set VTX_SERVICE_TOKEN, or run this from the checkout where \
         deploy/local/setup.sh wrote .vtx/service-token",
    )?;
    let ca = match &gateway.ca_file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    Ok(vtx_client::Client::trusting(gateway.url, &ca)?.with_token(token.expose()))
}

async fn upload(
    file: PathBuf,
    opts: vtx_client::UploadOptions,
    wait: Option<Duration>,
    gateway: GatewayArgs,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let client = service_client(gateway)?;
    let tty = std::io::stderr().is_terminal();
    let progress = move |sent: u64, total: u64| {
        if tty {
            let pct = sent as f64 * 100.0 / total.max(1) as f64;
            let bar = "#".repeat((pct / 2.5) as usize);
            eprint!("\r[{bar:<40}] {pct:>5.1}% {sent}/{total} bytes");
        }
    };
    let report = client.upload_video(&file, &opts, &progress).await?;
    if tty {
        eprintln!();
    }
    eprintln!(
        "{} chunks, {} bytes{}",
        report.chunks,
        report.bytes,
        if report.resumed_chunks > 0 {
            format!(" ({} already stored: resumed)", report.resumed_chunks)
        } else {
            String::new()
        }
    );
    println!("{}", report.completed.video_id);
    match wait {
        Some(timeout) => wait_outcome(
            client
                .wait_for_video(report.completed.video_id, timeout)
                .await,
            Waiter::Upload {
                last_chunk_stored: report.last_chunk_stored,
            },
        ),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn status(
    id: String,
    wait: Option<Duration>,
    gateway: GatewayArgs,
) -> anyhow::Result<ExitCode> {
    let client = service_client(gateway)?;
    let video_id: VideoId = id
        .parse()
        .context("ID must be a video or job id (a UUID)")?;
    let view = match client.video(video_id).await {
        Ok(v) => v,
        Err(e) if is_not_found(&e) => {
            // Perhaps a job id.
            let job = client.job(JobId::from_uuid(video_id.as_uuid())).await?;
            client.video(job.video_id).await?
        }
        Err(e) => return Err(e),
    };
    if let Some(timeout) = wait {
        return wait_outcome(
            client.wait_for_video(view.id, timeout).await,
            Waiter::Status,
        );
    }
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitCode::SUCCESS)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<vtx_client::ApiFailure>()
        .is_some_and(|f| f.status.as_u16() == 404)
}

/// Who waited: `vtx upload` (its stdout is the video id, so the status goes to stderr, after
/// the publish latency) or `vtx status` (the status is its output).
enum Waiter {
    Upload {
        last_chunk_stored: std::time::Instant,
    },
    Status,
}

/// How `--wait` ended, as the process's exit code: 0 published, 2 failed (its error code and
/// message printed), 3 still processing when the wait ran out.
fn wait_outcome(waited: anyhow::Result<VideoView>, waiter: Waiter) -> anyhow::Result<ExitCode> {
    let v = match waited {
        Ok(v) => v,
        Err(e) => match e.downcast::<vtx_client::WaitTimedOut>() {
            Ok(t) => {
                eprintln!(
                    "timed out: video {} still {} after {:?}",
                    t.video, t.state, t.after
                );
                return Ok(ExitCode::from(3));
            }
            Err(e) => return Err(e),
        },
    };
    let code = if v.state == "published" {
        match &waiter {
            Waiter::Upload { last_chunk_stored } => eprintln!(
                "published {:.2} s after the last chunk was stored",
                last_chunk_stored.elapsed().as_secs_f64()
            ),
            Waiter::Status => eprintln!("published"),
        }
        ExitCode::SUCCESS
    } else {
        let (code, message) = v
            .error
            .as_ref()
            .map_or(("unknown", ""), |e| (e.code.as_str(), e.message.as_str()));
        eprintln!("failed: {code}: {message}");
        ExitCode::from(2)
    };
    let json = serde_json::to_string_pretty(&v)?;
    match waiter {
        Waiter::Status => println!("{json}"),
        Waiter::Upload { .. } => eprintln!("{json}"),
    }
    Ok(code)
}
