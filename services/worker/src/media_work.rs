//! Media work off the async runtime (the blocking pool, or a thread of lower priority for the
//! high and extreme tiers) under a deadline, and uploading what it wrote.

use std::path::Path;
use std::time::Duration;

use vtx_domain::Tier;
use vtx_infra::ObjectStore;
use vtx_media::{CpuClass, MediaError};

use crate::WorkError;

/// Runs media work on the blocking pool. The deadline inside stops the work; the outer bound
/// only guards against a hang in FFmpeg.
pub(crate) async fn run_blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, MediaError> + Send + 'static,
) -> Result<T, WorkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = tx.send(f());
    });
    media_result(timeout, rx).await
}

/// Like `run_blocking`, in CPU class `class`: foreground work on the blocking pool, deferred
/// (the high tier) and background work (the extreme tier) on a thread of its own at a lower
/// priority, which the encoders' own threads inherit.
pub(crate) async fn run_in<T: Send + 'static>(
    class: CpuClass,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, MediaError> + Send + 'static,
) -> Result<T, WorkError> {
    if class == CpuClass::Foreground {
        return run_blocking(timeout, f).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    vtx_media::spawn_in_class(class, "vtx-media", move || {
        let _ = tx.send(f());
    })?;
    media_result(timeout, rx).await
}

/// The CPU class of a tier's encodes: the fast tier first, then the high tier, then the extreme.
pub(crate) fn cpu_class(tier: Tier) -> CpuClass {
    match tier {
        Tier::Fast => CpuClass::Foreground,
        Tier::High => CpuClass::Deferred,
        Tier::Extreme => CpuClass::Background,
    }
}

/// What a media thread sent back, waited for at most 30 s past its own deadline.
pub(crate) async fn media_result<T>(
    timeout: Duration,
    rx: tokio::sync::oneshot::Receiver<Result<T, MediaError>>,
) -> Result<T, WorkError> {
    tokio::time::timeout(timeout + Duration::from_secs(30), rx)
        .await
        .map_err(|_| WorkError::Media(MediaError::Timeout))?
        .map_err(|_| WorkError::Internal("media thread ended without a result".into()))?
        .map_err(WorkError::Media)
}

/// Uploads every file under `dir` to `prefix` + its relative path, several at a time (a tier
/// has hundreds of small HLS segments).
pub(crate) async fn upload_tree(
    store: &ObjectStore,
    dir: &Path,
    prefix: &str,
) -> Result<(), WorkError> {
    use futures_util::{StreamExt, TryStreamExt};
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&d).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_type().await?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    futures_util::stream::iter(files)
        .map(|path| async move {
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            store
                .put_file(&format!("{prefix}{rel}"), &path, content_type(&rel))
                .await
                .map_err(WorkError::from)
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Content type by file name, for what the pipeline writes.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("jpg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
