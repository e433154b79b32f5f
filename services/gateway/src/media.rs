//! Playback objects served by key, with HTTP Range support, so players and curl can fetch
//! renditions without access to the object store. Only rendition objects are served; sources
//! and upload chunks are never exposed.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::{ApiError, ApiResult, AppState};

const SERVED_PREFIX: &str = "videos/";

pub async fn serve(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !key.starts_with(SERVED_PREFIX)
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(ApiError::not_found("object-not-found", "object"));
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if let Some(r) = range
        && !r.starts_with("bytes=")
    {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range-not-satisfiable",
            "only byte ranges are supported",
        ));
    }
    let obj = state
        .store
        .get(&key, range)
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
        // Keys are versioned per job, so an object never changes once written.
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
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
