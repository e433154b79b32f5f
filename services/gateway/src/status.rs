//! Job and video status for internal services, with playback URLs once a video is ready.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use vtx_domain::api::{
    ErrorDetail, ExtremeView, JobView, Playback, RenditionView, TierView, VideoView,
};
use vtx_domain::damage::Concealed;
use vtx_domain::{JobId, VideoId, VideoState};
use vtx_infra::db::{self, JobRow, TierRow};

use crate::etag::json_or_not_modified;
use crate::{ApiError, ApiResult, AppState, Caller, parse_id, rfc3339};

fn error_detail(code: Option<String>, message: Option<String>) -> Option<ErrorDetail> {
    code.map(|code| ErrorDetail {
        code,
        message: message.unwrap_or_default(),
    })
}

fn millis(
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<u64> {
    match (from, to) {
        (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as u64),
        _ => None,
    }
}

fn tier_view(t: TierRow) -> TierView {
    TierView {
        encode_ms: millis(t.started_at, t.encoded_at),
        merge_ms: millis(t.encoded_at, t.finished_at),
        tier: t.tier,
        state: t.state,
        slices_done: t.slices_done.max(0) as u32,
        slices_total: t.slices_total.max(0) as u32,
        error: error_detail(t.error_code, t.error_message),
        started_at: t.started_at.map(rfc3339),
        encoded_at: t.encoded_at.map(rfc3339),
        finished_at: t.finished_at.map(rfc3339),
        concealed_video_frames: t.concealed_video_frames.max(0) as u64,
    }
}

fn job_view(j: JobRow, tiers: Vec<TierRow>) -> JobView {
    JobView {
        id: JobId::from_uuid(j.id),
        video_id: VideoId::from_uuid(j.video_id),
        state: j.state,
        attempts: j.attempts.max(0) as u32,
        error: error_detail(j.error_code, j.error_message),
        tiers: tiers.into_iter().map(tier_view).collect(),
        concealed_audio_frames: j.concealed_audio_frames.max(0) as u64,
        planning_ms: millis(Some(j.created_at), j.scheduled_at),
        created_at: rfc3339(j.created_at),
        scheduled_at: j.scheduled_at.map(rfc3339),
        started_at: j.started_at.map(rfc3339),
        finished_at: j.finished_at.map(rfc3339),
    }
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "status",
    summary = "A job and its tiers (service token).",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    responses(
        (status = 200, body = vtx_domain::api::JobView, headers(("ETag" = String, description = "Send it back in `If-None-Match`."))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current `ETag`."),
        crate::openapi::AuthFailures,
        (status = 404, description = "`job-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn job(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require_service()?;
    let id: JobId = parse_id(&id, "job-not-found", "job")?;
    let row = db::get_job(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job-not-found", "job"))?;
    let tiers = db::tiers_of_job(&state.pool, id).await?;
    Ok(json_or_not_modified(&headers, &job_view(row, tiers)))
}

/// The URLs under which the gateway serves one video's objects (see `media::serve`): signed
/// and expiring when the video (or `VTX_SIGNED_PLAYBACK`) asks for it.
pub(crate) struct MediaUrls {
    prefix: String,
}

impl MediaUrls {
    pub(crate) fn of(state: &AppState, video: VideoId, signed: bool) -> Self {
        let prefix = if signed || state.signed_playback {
            // The expiry is rounded up to a whole step (a minute, or the TTL if shorter), so
            // the URLs, and the `ETag` of a body that carries them, stay the same that long.
            let ttl = state.playback_url_ttl.as_secs().max(1);
            let step = ttl.min(60);
            let now = chrono::Utc::now().timestamp().max(0) as u64;
            let exp = ((now + ttl).div_ceil(step) * step) as i64;
            let token = state.auth.playback_token(video, exp);
            format!("{}/v1/media/s/{token}/", state.public_url)
        } else {
            format!("{}/v1/media/", state.public_url)
        };
        Self { prefix }
    }

    pub(crate) fn url(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

pub(crate) fn rendition_view(urls: &MediaUrls, r: &db::RenditionRow) -> RenditionView {
    RenditionView {
        url: urls.url(&r.object_key),
        name: r.name.clone(),
        container: r.container.clone(),
        codec: r.codec.clone(),
        codec_string: r.codec_string.clone(),
        prefetch_bytes_3s: r.prefetch_bytes_3s.map(|b| b.max(0) as u64),
        width: r.width as u32,
        height: r.height as u32,
        frames: r.frames as u64,
        duration_ms: r.duration_ms as u64,
        size_bytes: r.size_bytes as u64,
        bitrate: r.bitrate as u64,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct VideoQuery {
    /// Codecs the client decodes beyond H.264, comma-separated (`hevc,av1`): the video's
    /// extreme renditions in them are listed as alternatives.
    #[serde(default)]
    codecs: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/videos/{id}",
    tag = "status",
    summary = "A video: state, playback, extreme encode (service token).",
    params(("id" = String, Path, description = "The video id (a UUID)."), ("codecs" = Option<String>, Query, description = "Codecs decoded beyond H.264, comma-separated: `hevc,av1`.")),
    responses(
        (status = 200, body = vtx_domain::api::VideoView, headers(("ETag" = String, description = "Send it back in `If-None-Match`."))),
        (status = 304, description = "Not modified: `If-None-Match` holds the current `ETag`."),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), and the codes listed.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`video-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn video(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VideoQuery>,
) -> ApiResult<Response> {
    caller.require_service()?;
    let id: VideoId = parse_id(&id, "video-not-found", "video")?;
    let view = video_view(&state, id, q.codecs.as_deref()).await?;
    Ok(json_or_not_modified(&headers, &view))
}

/// A video's status body (also what video webhooks carry); `codecs` as in `?codecs=`.
/// One query: a polling client costs one round trip to PostgreSQL per read.
pub(crate) async fn video_view(
    state: &AppState,
    id: VideoId,
    codecs: Option<&str>,
) -> ApiResult<VideoView> {
    let s = db::video_status(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("video-not-found", "video"))?;
    let playback = playback_of(state, id, &s, codecs);
    let extreme = match (s.extreme_state, &s.extreme_reason, s.extreme_score) {
        (Some(state), Some(reason), Some(score)) => Some(ExtremeView {
            state,
            reason: reason.clone(),
            score: score.max(0) as u64,
            verdicts: s
                .extreme_result
                .as_ref()
                .map(|v| v.0.clone())
                .unwrap_or(serde_json::Value::Null),
        }),
        _ => None,
    };
    let concealed = s.job_id.and_then(|_| {
        let c = Concealed {
            video_frames: s.concealed_video_frames.unwrap_or(0).max(0) as u64,
            audio_frames: s.concealed_audio_frames.unwrap_or(0).max(0) as u64,
        };
        (c != Concealed::default()).then_some(c)
    });
    let v = s.video;
    Ok(VideoView {
        id,
        state: v.state,
        width: v.width.map(|x| x as u32),
        height: v.height.map(|x| x as u32),
        frames: v.frames.map(|x| x as u64),
        duration_ms: v.duration_ms.map(|x| x as u64),
        source_bytes: v.source_bytes as u64,
        error: error_detail(v.error_code, v.error_message),
        playback,
        live_tier: v.live_tier,
        published_at: v.published_at.map(rfc3339),
        job_id: s.job_id.map(JobId::from_uuid),
        concealed,
        extreme,
        created_at: rfc3339(v.created_at),
        updated_at: rfc3339(v.updated_at),
    })
}

/// What a published video plays: its live renditions, the HLS master (with the extreme
/// variants of the declared `codecs`, comma-separated), the cover. `None` before publication.
pub(crate) fn playback_of(
    state: &AppState,
    id: VideoId,
    s: &db::VideoStatusRow,
    codecs: Option<&str>,
) -> Option<Playback> {
    let v = &s.video;
    if v.state != VideoState::Published {
        return None;
    }
    let urls = MediaUrls::of(state, id, v.signed_playback);
    let mp4 = s
        .live
        .iter()
        // A live-ingest fast tier is HLS only: its renditions are in the master playlist.
        .filter(|r| r.container == "mp4")
        .map(|r| rendition_view(&urls, r))
        .collect();
    let wanted: Vec<&str> = codecs
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let alternatives: Vec<RenditionView> = s
        .extreme
        .iter()
        .filter(|r| wanted.contains(&r.codec.as_str()))
        .map(|r| rendition_view(&urls, r))
        .collect();
    // The HLS master lists the declared codecs' extreme variants beside the H.264 ones.
    let set = vtx_domain::hls::codec_set(alternatives.iter().map(|r| r.codec.as_str()));
    let combined = if set.is_empty() {
        None
    } else {
        s.extreme_hls_master(&set)
    };
    Some(Playback {
        hls: combined
            .or(v.hls_master_key.as_deref())
            .map(|k| urls.url(k)),
        mp4,
        cover: v.cover_key.as_deref().map(|k| urls.url(k)),
        alternatives,
    })
}
