//! `GET /v1/videos/{id}/events`: a video's status as a stream (`text/event-stream`): the status
//! body at once, then again each time an event about the video is recorded (published,
//! upgraded, failed, extreme renditions added), so a page follows its video without polling
//! the status API. Read with `fetch` (it takes the `Authorization` header, which `EventSource`
//! cannot send). Open to a service token and to the upload token of the video's own upload.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::Response;
use vtx_domain::VideoId;
use vtx_infra::db;

use crate::auth::Caller;
use crate::status::video_view;
use crate::{ApiError, ApiResult, AppState, parse_id};

/// How often the stream looks for a new event, sends a keep-alive, and how long it lasts.
const CHECK_EVERY: Duration = Duration::from_millis(500);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const LASTS: Duration = Duration::from_secs(30 * 60);

#[utoipa::path(
    get,
    path = "/v1/videos/{id}/events",
    tag = "status",
    summary = "A video's status as a stream: now, then after each of its events.",
    params(("id" = String, Path, description = "The video id (a UUID).")),
    responses(
        (status = 200, description = "`text/event-stream`: `event: status` with the video's status body (as `GET /v1/videos/{id}`), and `:` keep-alives.", content_type = "text/event-stream", body = String),
        crate::openapi::AuthFailures,
        (status = 404, description = "`video-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn video_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id: VideoId = parse_id(&id, "video-not-found", "video")?;
    if let Caller::Upload(upload) = &caller {
        let mut conn = state.pool.acquire().await?;
        let own = db::video_for_upload(&mut conn, *upload).await?;
        if own.map(|(v, _)| v) != Some(id) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "auth-scope",
                "an upload token follows only its own upload's video",
            ));
        }
    } else {
        caller.require_service()?;
    }
    let first = video_view(&state, id, None).await?;
    let seen = db::webhooks::last_event_of(&state.pool, id).await?;
    let started = Instant::now();
    let stream = futures_util::stream::unfold(
        (Some(first), seen, Instant::now()),
        move |(pending, mut seen, mut quiet_since)| {
            let state = state.clone();
            async move {
                if let Some(view) = pending {
                    let json = serde_json::to_string(&view).ok()?;
                    let chunk = Bytes::from(format!("event: status\ndata: {json}\n\n"));
                    return Some((Ok::<_, std::io::Error>(chunk), (None, seen, Instant::now())));
                }
                loop {
                    if started.elapsed() > LASTS {
                        return None;
                    }
                    tokio::time::sleep(CHECK_EVERY).await;
                    let newest = db::webhooks::last_event_of(&state.pool, id).await.ok()?;
                    if newest > seen {
                        seen = newest;
                        let view = video_view(&state, id, None).await.ok()?;
                        let json = serde_json::to_string(&view).ok()?;
                        let chunk = Bytes::from(format!("event: status\ndata: {json}\n\n"));
                        return Some((Ok(chunk), (None, seen, Instant::now())));
                    }
                    if quiet_since.elapsed() > KEEP_ALIVE {
                        quiet_since = Instant::now();
                        return Some((Ok(Bytes::from_static(b":\n\n")), (None, seen, quiet_since)));
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}
