//! The dispatcher: every half second it renders the events recorded since (the video's or the
//! upload's status body, frozen into each delivery), fans them out to the endpoints that asked
//! for their type, and sends the deliveries that are due, many at once, each under a deadline.
//! A slow or dead receiver only delays its own deliveries: the pipeline never waits for it.
//! Several gateways may run it: rows are taken with `SKIP LOCKED`, and a delivery being sent is
//! hidden from the others for a lease.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use vtx_domain::webhooks::{EventBody, EventType, retry_after};
use vtx_domain::{UploadId, VideoId};
use vtx_infra::db::webhooks::{self as db, AttemptResult, DueDelivery, EventRow};

use super::sign;
use crate::{AppState, rfc3339};

/// How deliveries are sent (`VTX_WEBHOOK_*`).
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Waits before each retry; the delivery fails after the last.
    pub retry: Vec<Duration>,
    /// Most an attempt may take, connecting included.
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// How long ended deliveries (and their events) are kept.
    pub retention: Duration,
}

/// How often old events are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Runs until `shutdown`.
pub async fn run(state: AppState, settings: DispatchSettings, shutdown: CancellationToken) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("vtx-webhooks")
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; nothing will be delivered");
            return;
        }
    };
    let mut forgotten_at: Option<std::time::Instant> = None;
    loop {
        if forgotten_at.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
            forgotten_at = Some(std::time::Instant::now());
            match db::forget_old_events(&state.pool, settings.retention, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "webhooks: forgot events past retention"),
                Err(e) => tracing::warn!(error = %e, "webhooks: forgetting old events failed"),
            }
        }
        if let Err(e) = fan_out(&state).await {
            tracing::warn!(error = %e, "webhooks: fan-out failed; will try again");
        }
        let sent = match deliver(&state, &http, &settings).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: claiming deliveries failed");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The body an event carries.
async fn render(state: &AppState, event: &EventRow) -> anyhow::Result<serde_json::Value> {
    let data = match (event.event_type, event.video_id, event.upload_id) {
        (EventType::UploadExpired, _, Some(upload)) => {
            match vtx_infra::db::get_upload(&state.pool, UploadId::from_uuid(upload)).await? {
                Some(row) => serde_json::to_value(
                    crate::uploads::upload_view(state, row)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                )?,
                None => serde_json::json!({ "id": upload }),
            }
        }
        (_, Some(video), _) => serde_json::to_value(
            crate::status::video_view(state, VideoId::from_uuid(video), None)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        )?,
        _ => serde_json::Value::Null,
    };
    Ok(serde_json::to_value(EventBody {
        event_type: event.event_type,
        timestamp: rfc3339(event.occurred_at),
        data,
    })?)
}

async fn fan_out(state: &AppState) -> anyhow::Result<()> {
    let mut tx = state.pool.begin().await?;
    let events = db::events_to_fan_out(&mut tx, 50).await?;
    for event in &events {
        // An event whose subject cannot be read (a storage hiccup is retried by the error path
        // below; a row gone for good is not) still goes out, without its body: it must not hold
        // back every event after it.
        let body = match render(state, event).await {
            Ok(body) => body,
            Err(e) if event.occurred_at < chrono::Utc::now() - chrono::Duration::minutes(5) => {
                tracing::warn!(event = %event.id, error = %e, "webhooks: sending an event without its body");
                serde_json::to_value(EventBody {
                    event_type: event.event_type,
                    timestamp: rfc3339(event.occurred_at),
                    data: serde_json::Value::Null,
                })?
            }
            Err(e) => return Err(e),
        };
        let n = db::fan_out(&mut tx, event, &body).await?;
        metrics::counter!("vtx_webhook_events_total", "type" => event.event_type.as_str())
            .increment(1);
        tracing::debug!(event = %event.id, r#type = %event.event_type, deliveries = n, "fanned out");
    }
    tx.commit().await?;
    Ok(())
}

/// Sends the due deliveries; returns how many were attempted.
async fn deliver(
    state: &AppState,
    http: &reqwest::Client,
    settings: &DispatchSettings,
) -> anyhow::Result<usize> {
    let limit = (settings.concurrency * 4).max(1) as i64;
    // Hidden from other dispatchers for longer than an attempt can take.
    let lease = settings.timeout * 2 + Duration::from_secs(5);
    let due = db::claim_due_deliveries(&state.pool, limit, lease).await?;
    let n = due.len();
    futures_util::stream::iter(due)
        .for_each_concurrent(settings.concurrency.max(1), |d| async move {
            let result = attempt(http, &d, settings).await;
            let outcome = match &result {
                AttemptResult::Delivered { .. } => "delivered",
                AttemptResult::Retry { .. } => "retry",
                AttemptResult::Failed { .. } => "failed",
            };
            metrics::counter!("vtx_webhook_attempts_total", "outcome" => outcome).increment(1);
            if let Err(e) =
                db::record_attempt(&state.pool, d.event_id, d.endpoint_id, &result).await
            {
                // The lease runs out and the delivery is attempted again: at least once.
                tracing::warn!(error = %e, "webhooks: cannot record an attempt");
            }
        })
        .await;
    Ok(n)
}

/// One attempt: the body signed with the endpoint's secret, 2xx counts as delivered.
async fn attempt(
    http: &reqwest::Client,
    d: &DueDelivery,
    settings: &DispatchSettings,
) -> AttemptResult {
    let attempts = d.attempts.max(1) as u32;
    let fail = |status: Option<u16>, error: String| {
        // Jitter from the event id and attempt: spread, yet the same for a repeat.
        let unit = f64::from(d.event_id.as_u128().wrapping_mul(u128::from(attempts)) as u16)
            / f64::from(u16::MAX);
        match retry_after(attempts, &settings.retry, unit) {
            Some(after) => AttemptResult::Retry {
                status,
                error,
                after,
            },
            None => AttemptResult::Failed { status, error },
        }
    };
    let Some(key) = sign::key_of(&d.secret) else {
        return AttemptResult::Failed {
            status: None,
            error: "the endpoint's secret is not a whsec_ secret".into(),
        };
    };
    let body = match serde_json::to_vec(&d.payload.0) {
        Ok(b) => b,
        Err(e) => {
            return AttemptResult::Failed {
                status: None,
                error: e.to_string(),
            };
        }
    };
    let id = format!("msg_{}", d.event_id.simple());
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign::sign(&key, &id, timestamp, &body);
    let sent = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => AttemptResult::Delivered {
            status: resp.status().as_u16(),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            fail(Some(status), format!("the receiver answered {status}"))
        }
        Err(e) => fail(None, format!("{e}")),
    }
}
