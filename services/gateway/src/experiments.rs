//! A/B experiments (service token): `POST /v1/experiments`, its report, stopping it (the winner
//! is kept), assignments, and what players report about plays (`POST /v1/playback-reports`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;
use vtx_domain::experiments::{
    self as ex, ArmReport, Assignment, ExperimentReport, ExperimentView, NewExperiment,
    PlaybackAccepted, PlaybackReports, Quantile, StopExperiment, Unit,
};
use vtx_infra::db::experiments::{self as db, ExperimentRow, PlaybackRow};

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState, rfc3339};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-experiment", message)
}

fn view(row: &ExperimentRow) -> ExperimentView {
    ExperimentView {
        id: row.id.to_string(),
        name: row.name.clone(),
        unit: row.unit(),
        arms: row.arms.0.clone(),
        effective_play_seconds: row.effective_play_seconds,
        state: row.state.clone(),
        winner: row.winner.clone(),
        created_at: rfc3339(row.created_at),
        stopped_at: row.stopped_at.map(rfc3339),
    }
}

async fn load(state: &AppState, id: &str) -> ApiResult<ExperimentRow> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("experiment-not-found", "experiment"))?;
    db::experiment(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("experiment-not-found", "experiment"))
}

/// `POST /v1/experiments`: 201 with the running experiment.
#[utoipa::path(
    post,
    path = "/v1/experiments",
    operation_id = "create_experiment",
    tag = "experiments",
    summary = "Start an A/B experiment on encoder profiles (by video) or delivery rules (by viewer).",
    request_body(content = vtx_domain::experiments::NewExperiment, content_type = "application/json"),
    responses(
        (status = 201, body = vtx_domain::experiments::ExperimentView),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-experiment`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 409, description = "`experiment-running`: one already runs for this unit.", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<NewExperiment>,
) -> ApiResult<(StatusCode, Json<ExperimentView>)> {
    caller.require_service()?;
    if req.name.is_empty()
        || req.name.len() > ex::MAX_NAME_LEN
        || req.name.chars().any(char::is_control)
    {
        return Err(invalid("name is 1-64 bytes, without control characters"));
    }
    ex::check_arms(req.unit, &req.arms).map_err(invalid)?;
    // Workers without the tool would fall back to fixed rate factors: the arm would not be
    // what it says.
    if !state.vmaf
        && req.arms.iter().any(|a| {
            matches!(
                a.encoder_profile().target,
                Some(ex::ProfileTarget::Target(vtx_domain::QualityTarget::Vmaf(
                    _
                )))
            )
        })
    {
        return Err(invalid(
            "vmaf: targets need Netflix's vmaf tool in this deployment (VTX_VMAF_TOOL)",
        ));
    }
    let effective = req.effective_play_seconds.unwrap_or(3.0);
    if !(1.0..=60.0).contains(&effective) {
        return Err(invalid("effective_play_seconds is 1-60"));
    }
    let row = db::create_experiment(&state.pool, &req.name, req.unit, &req.arms, effective)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "experiment-running",
                format!(
                    "a {} experiment is running; stop it first",
                    req.unit.as_str()
                ),
            )
        })?;
    Ok((StatusCode::CREATED, Json(view(&row))))
}

/// Every arm's numbers.
async fn arm_reports(state: &AppState, row: &ExperimentRow) -> ApiResult<Vec<ArmReport>> {
    let plays: HashMap<String, db::ArmPlays> =
        db::arm_plays(&state.pool, row.id, row.effective_play_seconds)
            .await?
            .into_iter()
            .map(|a| (a.arm.clone(), a))
            .collect();
    let quality: HashMap<String, (i64, Option<f64>, Option<f64>)> =
        db::arm_quality(&state.pool, row.id)
            .await?
            .into_iter()
            .map(|(arm, n, p, s)| (arm, (n, p, s)))
            .collect();
    let mut out = Vec::new();
    for arm in &row.arms.0 {
        let p = plays.get(&arm.name).cloned().unwrap_or_default();
        let n = p.plays.max(0) as u64;
        let ff = p.first_frames.max(0) as u64;
        let ranks: Vec<(Option<u64>, u64, Option<u64>)> = [0.5, 0.95]
            .iter()
            .filter_map(|&q| ex::quantile_ranks(ff, q))
            .collect();
        let wanted: Vec<i64> = ranks
            .iter()
            .flat_map(|&(a, b, c)| [a, Some(b), c])
            .flatten()
            .map(|r| r as i64)
            .collect();
        let values: HashMap<i64, f64> = if wanted.is_empty() {
            HashMap::new()
        } else {
            db::first_frame_at_ranks(&state.pool, row.id, &arm.name, &wanted)
                .await?
                .into_iter()
                .collect()
        };
        let quantile = |k: usize| {
            let r = ranks.get(k);
            let at = |rank: u64| values.get(&(rank as i64)).copied();
            Quantile {
                n: ff,
                value: r.and_then(|r| at(r.1)),
                low: r.and_then(|r| r.0).and_then(at),
                high: r.and_then(|r| r.2).and_then(at),
            }
        };
        let (videos, psnr, ssim) = quality.get(&arm.name).copied().unwrap_or((0, None, None));
        out.push(ArmReport {
            name: arm.name.clone(),
            videos: videos.max(0) as u64,
            plays: n,
            bytes_per_play: ex::mean(n, p.bytes_sum, p.bytes_squares),
            first_frame_ms_p50: quantile(0),
            first_frame_ms_p95: quantile(1),
            failure_rate: ex::wilson(p.failed.max(0) as u64, n),
            effective_play_rate: ex::wilson(p.effective.max(0) as u64, n),
            stalls_per_play: (n > 0).then(|| p.stalls as f64 / n as f64),
            psnr,
            ssim,
        });
    }
    Ok(out)
}

/// `GET /v1/experiments/{id}`: per arm, bytes per play, first-frame p50/p95, failure and
/// effective-play rates, PSNR/SSIM, with 95% intervals and sample sizes.
#[utoipa::path(
    get,
    path = "/v1/experiments/{id}",
    operation_id = "experiment_report",
    tag = "experiments",
    summary = "An experiment's report, per arm.",
    params(("id" = String, Path, description = "The experiment id (a UUID).")),
    responses(
        (status = 200, body = vtx_domain::experiments::ExperimentReport),
        crate::openapi::AuthFailures,
        (status = 404, description = "`experiment-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ExperimentReport>> {
    caller.require_service()?;
    let row = load(&state, &id).await?;
    let arms = arm_reports(&state, &row).await?;
    Ok(Json(ExperimentReport {
        experiment: view(&row),
        arms,
    }))
}

/// `POST /v1/experiments/{id}/stop`: stops it and keeps the winner (named, or picked).
#[utoipa::path(
    post,
    path = "/v1/experiments/{id}/stop",
    operation_id = "stop_experiment",
    tag = "experiments",
    summary = "Stop an experiment; its winner's profile stays in force for new videos.",
    params(("id" = String, Path, description = "The experiment id (a UUID).")),
    request_body(content = vtx_domain::experiments::StopExperiment, content_type = "application/json"),
    responses(
        (status = 200, body = vtx_domain::experiments::ExperimentView),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-experiment` (no such arm).", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`experiment-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 409, description = "`experiment-stopped`, or `experiment-undecided` (no arm can be picked yet: name one).", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<StopExperiment>,
) -> ApiResult<Json<ExperimentView>> {
    caller.require_service()?;
    let row = load(&state, &id).await?;
    if !row.running() {
        return Err(ApiError::conflict(
            "experiment-stopped",
            "the experiment is already stopped",
        ));
    }
    let winner = match req.winner {
        Some(w) if row.arms.0.iter().any(|a| a.name == w) => w,
        Some(w) => return Err(invalid(format!("no arm named {w:?}"))),
        None => {
            let reports = arm_reports(&state, &row).await?;
            let stats: Vec<_> = reports
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        a.bytes_per_play,
                        a.failure_rate,
                        a.effective_play_rate,
                    )
                })
                .collect();
            ex::pick_winner(&stats).ok_or_else(|| {
                ApiError::conflict(
                    "experiment-undecided",
                    format!(
                        "fewer than {} plays in an arm: name the winner",
                        ex::MIN_PLAYS_TO_PICK
                    ),
                )
            })?
        }
    };
    let row = db::stop_experiment(&state.pool, row.id, &winner)
        .await?
        .ok_or_else(|| {
            ApiError::conflict("experiment-stopped", "the experiment is already stopped")
        })?;
    Ok(Json(view(&row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignmentQuery {
    /// A video id (video experiments) or a viewer's id (viewer experiments), at most 128 bytes.
    pub key: String,
}

/// `GET /v1/experiments/{id}/assignment?key=`: the arm a video or viewer is in.
#[utoipa::path(
    get,
    path = "/v1/experiments/{id}/assignment",
    operation_id = "experiment_assignment",
    tag = "experiments",
    summary = "The arm a video or viewer belongs to, and what it changes.",
    params(("id" = String, Path, description = "The experiment id (a UUID)."), AssignmentQuery),
    responses(
        (status = 200, body = vtx_domain::experiments::Assignment),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-experiment` (key too long).", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`experiment-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn assignment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<AssignmentQuery>,
) -> ApiResult<Json<Assignment>> {
    caller.require_service()?;
    if q.key.is_empty() || q.key.len() > 128 {
        return Err(invalid("key is 1-128 bytes"));
    }
    let row = load(&state, &id).await?;
    let arm = row.arm_of(&q.key);
    Ok(Json(Assignment {
        experiment_id: row.id.to_string(),
        arm: arm.name.clone(),
        quality_target: arm.quality_target.clone(),
        psychovisual: arm.psychovisual,
        max_height: arm.max_height,
    }))
}

/// `POST /v1/playback-reports`: what players saw of plays, counted towards the running
/// experiments' arms (a video experiment counts the videos it encoded; a viewer experiment
/// counts reports that name a viewer).
#[utoipa::path(
    post,
    path = "/v1/playback-reports",
    operation_id = "report_playback",
    tag = "experiments",
    summary = "Report plays as players saw them (first frame, stalls, failure, time watched, bytes).",
    request_body(content = vtx_domain::experiments::PlaybackReports, content_type = "application/json"),
    responses(
        (status = 200, body = vtx_domain::experiments::PlaybackAccepted),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-report`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 413, description = "`batch-too-large`.", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn report_plays(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<PlaybackReports>,
) -> ApiResult<Json<PlaybackAccepted>> {
    caller.require_service()?;
    let max = state.plays.max_batch();
    if req.reports.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch-too-large",
            format!("at most {max} reports per batch"),
        ));
    }
    let bad = |i: usize, what: &str| {
        ApiError::bad_request("invalid-report", format!("reports[{i}]: {what}"))
    };
    let mut videos = Vec::with_capacity(req.reports.len());
    for (i, r) in req.reports.iter().enumerate() {
        videos.push(
            r.video_id
                .parse::<Uuid>()
                .map_err(|_| bad(i, "video_id is a UUID"))?,
        );
        if r.viewer_id
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 128)
        {
            return Err(bad(i, "viewer_id is 1-128 bytes"));
        }
        if r.play_id
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 128)
        {
            return Err(bad(i, "play_id is 1-128 bytes"));
        }
        if r.first_frame_ms.is_some_and(|ms| ms > 600_000) {
            return Err(bad(i, "first_frame_ms is at most 600000"));
        }
        if r.stalls > 100_000 {
            return Err(bad(i, "stalls is at most 100000"));
        }
        if !(0.0..=86_400.0).contains(&r.watched_seconds) {
            return Err(bad(i, "watched_seconds is 0-86400"));
        }
        if r.bytes > 1_000_000_000_000 {
            return Err(bad(i, "bytes is at most 10^12"));
        }
    }
    let mut rows = Vec::new();
    let row = |exp: Uuid, arm: String, i: usize| {
        let r = &req.reports[i];
        PlaybackRow {
            experiment: exp,
            arm,
            video: videos[i],
            play_id: r.play_id.clone(),
            first_frame_ms: r.first_frame_ms.map(|ms| ms as i32),
            stalls: r.stalls as i32,
            failed: r.failed,
            watched_seconds: r.watched_seconds,
            bytes: r.bytes as i64,
        }
    };
    if let Some(e) = db::running_experiment(&state.pool, Unit::Video).await? {
        let arms: HashMap<Uuid, String> = db::video_arms(&state.pool, e.id, &videos)
            .await?
            .into_iter()
            .collect();
        for (i, v) in videos.iter().enumerate() {
            if let Some(arm) = arms.get(v) {
                rows.push(row(e.id, arm.clone(), i));
            }
        }
    }
    if let Some(e) = db::running_experiment(&state.pool, Unit::Viewer).await? {
        for (i, r) in req.reports.iter().enumerate() {
            if let Some(viewer) = &r.viewer_id {
                rows.push(row(e.id, e.arm_of(viewer).name.clone(), i));
            }
        }
    }
    let counted = db::add_playback_reports(&state.pool, &rows).await?;
    Ok(Json(PlaybackAccepted {
        accepted: req.reports.len() as u64,
        counted,
    }))
}
