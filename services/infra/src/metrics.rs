//! Prometheus metrics. One recorder per process; the gateway serves it at `/metrics`, and the
//! worker and scheduler processes serve it on `VTX_METRICS_ADDR`.
//!
//! Names: `vtx_queue_ready{queue}`, `vtx_queue_consumers{queue}`, `vtx_tasks_in_flight{kind,tier}`,
//! `vtx_task_seconds{kind,tier,outcome}`, `vtx_encode_fps{tier}`, `vtx_failures_total{code}`,
//! `vtx_jobs_planned_total`, `vtx_tiers_live_total{tier}`, `vtx_publish_seconds{tier}` (upload
//! complete -> tier live), `vtx_queue_oldest_seconds{queue}` (the longest a waiting task has
//! waited), and the rest listed in docs/operations.md.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use vtx_domain::messages::queue;

use crate::broker::BrokerClient;
use crate::health;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder on first use and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("vtx_task_seconds".into()),
                &[
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("vtx_encode_fps".into()),
                    &[5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("vtx_publish_seconds".into()),
                    &[
                        0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                        3600.0, 14400.0,
                    ],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // A second install (several apps in one test process) keeps the first recorder.
        if metrics::set_global_recorder(recorder).is_ok() {
            seed();
        }
        handle
    })
}

/// Counters that alerts and dashboards divide or sum exist from the start, at zero, rather
/// than appearing with their first event.
fn seed() {
    for code in vtx_domain::ErrorCode::ALL {
        metrics::counter!("vtx_failures_total", "code" => code.as_str()).increment(0);
    }
    for tier in vtx_domain::Tier::ALL {
        metrics::counter!("vtx_tiers_live_total", "tier" => tier.as_str()).increment(0);
    }
    metrics::counter!("vtx_jobs_planned_total").increment(0);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// Serves `/metrics`, `/healthz` (every loop of the process alive) and `/readyz` (`deps`
/// answer) on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    deps: health::Dependencies,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    handle();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let status = |ok: bool| {
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let app = Router::new()
        .route("/metrics", get(|| async { render() }))
        .route(
            "/healthz",
            get(move || async move {
                let (ok, report) = health::liveness();
                (status(ok), Json(report))
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let (ok, report) = deps.readiness().await;
                (status(ok), Json(report))
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}

/// Samples queue depths and consumers every few seconds until `shutdown`.
pub async fn sample_queues(broker: BrokerClient, shutdown: CancellationToken) {
    handle();
    loop {
        if let Ok(b) = broker.get().await {
            for q in queue::WORK.into_iter().chain([queue::DEAD]) {
                if let Ok((ready, consumers)) = b.queue_stats(q).await {
                    metrics::gauge!("vtx_queue_ready", "queue" => q).set(f64::from(ready));
                    metrics::gauge!("vtx_queue_consumers", "queue" => q).set(f64::from(consumers));
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
