//! Media work off the async runtime (the blocking pool, or a thread of lower priority for the
//! high and extreme tiers) under a deadline, and uploading what it wrote.

use std::time::Duration;

use vtx_domain::Tier;
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
        Tier::Instant | Tier::Fast => CpuClass::Foreground,
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
