//! Playback objects served by key, with HTTP Range support, so players and curl can fetch
//! renditions without access to the object store. Only rendition objects are served; sources
//! and upload chunks are never exposed.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use vtx_domain::VideoId;
use vtx_infra::db;

use crate::{ApiError, ApiResult, AppState};

const SERVED_PREFIX: &str = "videos/";

/// The playback object route's description: axum's catch-all `{*key}` has no OpenAPI spelling,
/// so this route is described here and routed by hand (`lib.rs`).
#[utoipa::path(
    get,
    path = "/v1/media/{key}",
    tag = "media",
    summary = "A playback object (MP4, playlist, segment, cover), with Range.",
    params(
        ("key" = String, Path, description = "The object key, `videos/<video>/<job>/<tier>/...` (slashes included)."),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=a-b`."),
    ),
    security(()),
    responses(
        (status = 200, description = "The object.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The asked range.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "`playback-url-required` (the video plays from signed URLs only), `playback-url-invalid`, `playback-url-expired`.", body = vtx_domain::api::ErrorBody),
        (status = 404, description = "`object-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 416, description = "`range-not-satisfiable`.", body = vtx_domain::api::ErrorBody),
        (status = 503, description = "`storage-unavailable`.", body = vtx_domain::api::ErrorBody),
    )
)]
#[allow(dead_code)]
pub(crate) fn serve_doc() {}

pub async fn serve(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = authorize(&state, &key).await?;
    if !key.starts_with(SERVED_PREFIX)
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(ApiError::not_found("object-not-found", "object"));
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(single_byte_range);
    let obj = state
        .store
        .get(&key, range.as_deref())
        .await
        .map_err(ApiError::storage)?;
    let status = if obj.content_range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    // The worker stored each object with its content type.
    let content_type = obj
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    // Stream the object through; a failure mid-way ends the response (the client sees a short
    // body against Content-Length and retries with a Range).
    let stream = futures_util::stream::unfold(Some(obj.body), |body| async move {
        let mut body = body?;
        match body.try_next().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), Some(body))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "object stream failed mid-response");
                Some((Err(std::io::Error::other(e)), None))
            }
        }
    });
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, obj.content_length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, cache_control(&key));
    if let Some(cr) = obj
        .content_range
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp = resp.header(header::CONTENT_RANGE, cr);
    }
    if let Some(etag) = obj
        .etag
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp = resp.header(header::ETAG, etag);
    }
    resp.body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// The object key a request may fetch: `s/<token>/<key>` when the token plays the key's video,
/// or the key itself when its video's URLs need no signature.
async fn authorize(state: &AppState, path: &str) -> ApiResult<String> {
    let refused = |code: &'static str, message: &str| {
        ApiError::new(StatusCode::FORBIDDEN, code, message.to_string())
    };
    let (token, key) = match path
        .strip_prefix("s/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((token, key)) => (Some(token), key),
        None => (None, path),
    };
    let video: Option<VideoId> = key
        .strip_prefix(SERVED_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse().ok());
    match (token, video) {
        (Some(token), Some(video)) => {
            match state
                .auth
                .verify_playback(token, video, chrono::Utc::now().timestamp())
            {
                Ok(()) => Ok(key.to_string()),
                Err(crate::auth::TokenError::Expired) => Err(refused(
                    "playback-url-expired",
                    "this playback URL has expired; ask for the video's status again",
                )),
                Err(_) => Err(refused(
                    "playback-url-invalid",
                    "this playback URL is not signed for this video",
                )),
            }
        }
        (Some(_), None) => Err(ApiError::not_found("object-not-found", "object")),
        (None, Some(video)) => {
            if state.signed_playback || signed_only(state, video).await? {
                Err(refused(
                    "playback-url-required",
                    "this video plays from signed URLs only (see its status)",
                ))
            } else {
                Ok(key.to_string())
            }
        }
        (None, None) => Ok(key.to_string()),
    }
}

/// Whether `video` plays from signed URLs only. Fixed when its upload is created, so it is
/// read from PostgreSQL once per video and kept: serving a segment costs no query.
async fn signed_only(state: &AppState, video: VideoId) -> ApiResult<bool> {
    if let Some(known) = state
        .signed_videos
        .lock()
        .expect("not poisoned")
        .get(&video)
    {
        return Ok(*known);
    }
    // Unknown: nothing to play, nothing to keep.
    let Some(signed) = db::signed_playback(&state.pool, video).await? else {
        return Ok(false);
    };
    let mut known = state.signed_videos.lock().expect("not poisoned");
    // Bounded: past the limit it starts over (a reread costs one query per video).
    if known.len() >= 100_000 {
        known.clear();
    }
    known.insert(video, signed);
    Ok(signed)
}

/// Segments, MP4s and covers never change once written (keys are versioned per job and tier):
/// cached for good. Playlists are cached briefly, so a playlist that grows (or a master that
/// gains variants) is seen soon.
fn cache_control(key: &str) -> &'static str {
    if key.ends_with(".m3u8") {
        "public, max-age=10"
    } else {
        "public, max-age=31536000, immutable"
    }
}

/// The one byte range a `Range` header asks for, as the object store takes it. Anything else
/// (another unit, several ranges, a malformed one) is ignored and the whole object served, as
/// RFC 9110 (14.2) lets a server do; a well-formed range past the end is refused by the store
/// (416).
fn single_byte_range(value: &str) -> Option<String> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => number(suffix)
            .filter(|&n| n > 0)
            .map(|n| format!("bytes=-{n}")),
        (a, "") => number(a).map(|a| format!("bytes={a}-")),
        (a, b) => {
            let (a, b) = (number(a)?, number(b)?);
            (a <= b).then(|| format!("bytes={a}-{b}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::single_byte_range;

    #[test]
    fn one_well_formed_byte_range_passes_anything_else_is_ignored() {
        assert_eq!(
            single_byte_range("bytes=0-99").as_deref(),
            Some("bytes=0-99")
        );
        assert_eq!(
            single_byte_range("bytes=100-").as_deref(),
            Some("bytes=100-")
        );
        assert_eq!(
            single_byte_range("bytes=-500").as_deref(),
            Some("bytes=-500")
        );
        for bad in [
            "bytes=",
            "bytes=abc",
            "bytes=5-1",
            "bytes=-",
            "bytes=-0",
            "bytes=0-1,5-9",
            "items=0-9",
            "bytes=99999999999999999999-",
            "bytes=0x10-",
        ] {
            assert_eq!(single_byte_range(bad), None, "{bad}");
        }
    }
}
