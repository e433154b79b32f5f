//! `vtx upload` and `vtx status`: the commands that talk to a gateway, and their exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use vtx_domain::api::VideoView;
use vtx_domain::{JobId, VideoId};
use vtx_infra::Config;

use crate::args::GatewayArgs;

/// A client with the service token from `VTX_SERVICE_TOKEN` or `.vtx/service-token`.
pub(crate) fn service_client(gateway: GatewayArgs) -> anyhow::Result<vtx_client::Client> {
    let cfg = Config::from_env()?;
    let token = cfg.auth.service_tokens.first().context(
        "no service token: set VTX_SERVICE_TOKEN, or run this from the checkout where \
         deploy/local/setup.sh wrote .vtx/service-token",
    )?;
    let ca = match &gateway.ca_file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    Ok(vtx_client::Client::trusting(gateway.url, &ca)?
        .with_token(token.expose())
        .with_cutter(vtx_chunker::cutter()))
}

pub(crate) async fn upload(
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

pub(crate) async fn status(
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

pub(crate) fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<vtx_client::ApiFailure>()
        .is_some_and(|f| f.status.as_u16() == 404)
}

/// Who waited: `vtx upload` (its stdout is the video id, so the status goes to stderr, after
/// the publish latency) or `vtx status` (the status is its output).
pub(crate) enum Waiter {
    Upload {
        last_chunk_stored: std::time::Instant,
    },
    Status,
}

/// How `--wait` ended, as the process's exit code: 0 published, 2 failed (its error code and
/// message printed), 3 still processing when the wait ran out.
pub(crate) fn wait_outcome(
    waited: anyhow::Result<VideoView>,
    waiter: Waiter,
) -> anyhow::Result<ExitCode> {
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
