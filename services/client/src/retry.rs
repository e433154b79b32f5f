//! Retrying a call to the gateway: the one backoff every upload path uses.

use std::time::Duration;

use crate::ApiFailure;

/// Runs `f` until it succeeds, a permanent error (4xx but 429) comes back, or it has failed
/// eight times; waits with jittered exponential backoff from 250 ms, or as long as the server's
/// `Retry-After` asks (a 429 from a per-grant limit).
pub(crate) async fn retry<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(8)
        .with_jitter();
    f.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &anyhow::Error| {
            e.downcast_ref::<ApiFailure>()
                .is_none_or(ApiFailure::is_transient) // or a connection-level failure
        })
        .adjust(|e: &anyhow::Error, delay| {
            let asked = e.downcast_ref::<ApiFailure>().and_then(|f| f.retry_after);
            // A server that names a time is waited for; a little jitter spreads clients out.
            asked.map(|a| a + delay.unwrap_or_default() / 4).or(delay)
        })
        .notify(|e: &anyhow::Error, delay: Duration| {
            tracing::warn!(what, error = %e, ?delay, "failed; retrying");
        })
        .await
        .map_err(|e| e.context(what.to_string()))
}
