//! Play events (`POST /v1/plays`) and the hottest videos (`GET /v1/hot`).
//!
//! Plays are counted in memory per (video, minute) and added to PostgreSQL every
//! `VTX_PLAYS_FLUSH_SECS` in batched upserts, so a flood of plays costs a few statements. What a
//! crash of the gateway loses: the plays counted since the last flush (at most one interval).
//! A flush that fails keeps its counts for the next one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vtx_domain::VideoId;
use vtx_domain::api::{HotVideo, HotVideos, PlayRejected, PlaysAccepted, PlaysRequest};
use vtx_domain::hotness::HotBounds;
use vtx_infra::db;

use crate::{ApiError, ApiResult, AppState, Caller};

/// Most distinct (video, minute) counters held between flushes; beyond it plays are refused
/// (`plays-overloaded`) rather than memory growing without bound.
const MAX_COUNTERS: usize = 1_000_000;

/// Play counts not yet in PostgreSQL.
pub struct PlayCounter {
    counts: Mutex<HashMap<(Uuid, i64), i64>>,
    /// Oldest play accepted: the widest hotness window.
    window: Duration,
    max_batch: usize,
}

impl PlayCounter {
    pub fn new(bounds: &HotBounds, max_batch: usize) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            window: Duration::from_secs(bounds.window_max_secs),
            max_batch,
        }
    }

    /// Most events one request may carry.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn add(&self, plays: impl IntoIterator<Item = (Uuid, i64)>) -> bool {
        let mut counts = self.counts.lock().expect("play counter lock");
        for key in plays {
            if counts.len() >= MAX_COUNTERS && !counts.contains_key(&key) {
                return false;
            }
            *counts.entry(key).or_insert(0) += 1;
        }
        true
    }

    fn take(&self) -> HashMap<(Uuid, i64), i64> {
        std::mem::take(&mut *self.counts.lock().expect("play counter lock"))
    }

    fn put_back(&self, counts: HashMap<(Uuid, i64), i64>) {
        let mut held = self.counts.lock().expect("play counter lock");
        for (k, n) in counts {
            *held.entry(k).or_insert(0) += n;
        }
    }

    /// Adds the held counts to PostgreSQL; on failure they stay for the next flush.
    pub async fn flush(&self, pool: &PgPool) {
        let counts = self.take();
        if counts.is_empty() {
            return;
        }
        let rows: Vec<(Uuid, DateTime<Utc>, i64)> = counts
            .iter()
            .filter_map(|(&(v, minute), &n)| {
                DateTime::from_timestamp(minute * 60, 0).map(|m| (v, m, n))
            })
            .collect();
        let started = std::time::Instant::now();
        match db::add_plays(pool, &rows).await {
            Ok(()) => {
                metrics::counter!("vtx_play_flushes_total").increment(1);
                metrics::histogram!("vtx_play_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(error = %e, counters = rows.len(), "play flush failed; kept for the next");
                self.put_back(counts);
            }
        }
    }

    /// Flushes every `every` until `shutdown`, then once more.
    pub async fn run(&self, pool: PgPool, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            self.flush(&pool).await;
        }
        self.flush(&pool).await;
    }
}

/// `POST /v1/plays`: counts a batch of plays; answers which were refused and why.
#[utoipa::path(
    post,
    path = "/v1/plays",
    tag = "plays",
    summary = "Count a batch of plays (service token).",
    request_body(content = vtx_domain::api::PlaysRequest, content_type = "application/json"),
    responses(
        (status = 200, body = vtx_domain::api::PlaysAccepted),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), and the codes listed.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 413, description = "`batch-too-large`.", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        (status = 503, description = "`plays-overloaded` (with `Retry-After`), `database-unavailable`.", body = vtx_domain::api::ErrorBody),
    )
)]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<PlaysRequest>,
) -> ApiResult<Json<PlaysAccepted>> {
    caller.require_service()?;
    let counter = &state.plays;
    if req.plays.len() > counter.max_batch {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "batch-too-large",
            format!("at most {} plays per batch", counter.max_batch),
        ));
    }
    let now = Utc::now();
    let oldest = now - TimeDelta::from_std(counter.window).unwrap_or(TimeDelta::days(1));
    let newest = now + TimeDelta::minutes(1);
    let mut rejected = Vec::new();
    let mut parsed: Vec<(u32, Uuid, DateTime<Utc>)> = Vec::with_capacity(req.plays.len());
    for (i, p) in req.plays.iter().enumerate() {
        let index = i as u32;
        let Ok(video) = p.video_id.parse::<VideoId>() else {
            rejected.push(reject(index, "invalid-video-id"));
            continue;
        };
        let at = match &p.at {
            None => now,
            Some(t) => match DateTime::parse_from_rfc3339(t) {
                Ok(t) => t.with_timezone(&Utc),
                Err(_) => {
                    rejected.push(reject(index, "invalid-time"));
                    continue;
                }
            },
        };
        if at < oldest || at > newest {
            rejected.push(reject(index, "play-outside-window"));
            continue;
        }
        parsed.push((index, video.as_uuid(), at));
    }
    let mut ids: Vec<Uuid> = parsed.iter().map(|p| p.1).collect();
    ids.sort_unstable();
    ids.dedup();
    let known = db::published_among(&state.pool, &ids).await?;
    let mut counted = Vec::with_capacity(parsed.len());
    for (index, video, at) in parsed {
        if known.contains(&video) {
            let minute = at
                .duration_trunc(TimeDelta::minutes(1))
                .unwrap_or(at)
                .timestamp()
                / 60;
            counted.push((video, minute));
        } else {
            rejected.push(reject(index, "video-not-found"));
        }
    }
    let accepted = counted.len() as u32;
    if !counter.add(counted) {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "plays-overloaded",
            "too many play counters wait for their flush; retry shortly",
        ));
    }
    metrics::counter!("vtx_plays_accepted_total").increment(u64::from(accepted));
    metrics::counter!("vtx_plays_rejected_total").increment(rejected.len() as u64);
    rejected.sort_by_key(|r| r.index);
    Ok(Json(PlaysAccepted { accepted, rejected }))
}

fn reject(index: u32, code: &str) -> PlayRejected {
    PlayRejected {
        index,
        code: code.to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub struct HotQuery {
    #[serde(default)]
    limit: Option<u32>,
    /// Defaults to the widest window.
    #[serde(default)]
    window_secs: Option<u64>,
}

/// `GET /v1/hot?limit=N&window_secs=S`: the most played videos (operators).
#[utoipa::path(
    get,
    path = "/v1/hot",
    tag = "plays",
    summary = "The most played videos now (service token).",
    params(("limit" = Option<u32>, Query, description = "How many (default and most: the tracker's top x)."), ("window_secs" = Option<u64>, Query, description = "Over how many seconds (default: the widest window).")),
    responses(
        (status = 200, body = vtx_domain::api::HotVideos),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), and the codes listed.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
    )
)]
pub async fn hot(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HotQuery>,
) -> ApiResult<Json<HotVideos>> {
    caller.require_service()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let window = q
        .window_secs
        .unwrap_or(state.plays.window.as_secs())
        .clamp(60, state.plays.window.as_secs().max(60));
    let top = db::top_videos(&state.pool, Duration::from_secs(window), limit).await?;
    Ok(Json(HotVideos {
        window_secs: window,
        videos: top
            .into_iter()
            .map(|h| HotVideo {
                video_id: h.video,
                plays: h.plays.max(0) as u64,
                extreme: h.extreme,
            })
            .collect(),
    }))
}
