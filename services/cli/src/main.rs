//! `vtx`: every service as a subcommand, plus the client commands. Thin: it reads
//! configuration, connects the adapters and hands them to the service crates.

use std::process::ExitCode;
use std::time::Duration;

mod args;
mod bench;
mod client_commands;

use args::{Bench, Cli, Command};
use client_commands::{status, upload};

use clap::Parser;
use vtx_infra::{Config, telemetry};
use vtx_stack::{Resources, Roles, Stack};

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
            signed_playback,
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
                signed_playback,
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
        Command::Bench(Bench::PublishLoad {
            seconds,
            loads,
            lengths,
        }) => bench::publish_load(seconds, loads, lengths).await,
        Command::Bench(Bench::Live { runs, long_runs }) => bench::live(runs, long_runs).await,
        Command::Bench(Bench::Quality {
            inputs,
            seconds,
            target_psnr,
        }) => {
            tokio::task::spawn_blocking(move || bench::quality(inputs, seconds, target_psnr))
                .await?
        }
        Command::Bench(Bench::Extreme {
            inputs,
            priority_only,
            seconds,
            curves_only,
        }) => {
            tokio::task::spawn_blocking(move || {
                bench::extreme(inputs, priority_only, seconds, curves_only)
            })
            .await?
        }
        Command::Bench(Bench::Hotness {
            seconds,
            batch,
            senders,
            videos,
            minutes,
        }) => bench::hotness(seconds, batch, senders, videos, minutes).await,
        Command::Bench(Bench::Status { seconds, rates }) => bench::status(seconds, rates).await,
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
            anyhow::ensure!(
                tier != vtx_media::Tier::Instant,
                "the instant tier is the upload itself, not an encode: pick fast, high or extreme"
            );
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
