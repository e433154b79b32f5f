//! tus 1.0 (<https://tus.io/protocols/resumable-upload>) at `/v1/tus/`, for clients that send a
//! whole file: core, creation, checksum (sha1, sha256), termination, expiration, and OPTIONS
//! discovery. A tus upload is an upload session like a chunked one: each PATCH body is stored
//! as its next part, and when the offset reaches `Upload-Length` the parts become the source
//! and the video's job starts, exactly as when a chunked upload completes.
//!
//! Credentials as everywhere (`Authorization: Bearer`): a service or grant token creates; the
//! creating grant, the service or the session's upload token (returned in `Vtx-Upload-Token`)
//! continue. An interrupted PATCH stores nothing; the client resumes from the last offset.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use vtx_domain::{UploadId, UploadState, keys};
use vtx_infra::db::{self, ChunkInsert, UploadRow};

use crate::auth::Caller;
use crate::body::{Streamed, stream_to_store};
use crate::staged::Staged;
use crate::uploads::{finish_upload, load_upload, session_expiry};
use crate::{ApiError, ApiResult, AppState, parse_id};

const VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,checksum,termination,expiration";
const CHECKSUMS: &str = "sha1,sha256";
/// `Upload-Metadata` is kept as sent, up to this size.
const MAX_METADATA: usize = 4096;

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Every tus response carries `Tus-Resumable`; a version refusal also names the versions.
pub async fn resumable_header(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(h("tus-resumable"), HeaderValue::from_static(VERSION));
    if resp.status() == StatusCode::PRECONDITION_FAILED {
        resp.headers_mut()
            .insert(h("tus-version"), HeaderValue::from_static(VERSION));
    }
    resp
}

/// Requests other than OPTIONS must speak tus 1.0.0 (412 otherwise).
fn check_version(headers: &HeaderMap) -> ApiResult<()> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(VERSION) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus-version",
            "send Tus-Resumable: 1.0.0",
        )),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<Result<u64, ()>> {
    headers
        .get(name)
        .map(|v| v.to_str().ok().and_then(|s| s.parse().ok()).ok_or(()))
}

fn http_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn expires(row: &UploadRow) -> (HeaderName, String) {
    (h("upload-expires"), http_date(row.expires_at))
}

/// What a tus request may be refused with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum TusFailures {
    /// Malformed: `invalid-request`, or a tus code (`tus-*`).
    #[response(status = 400)]
    BadRequest(vtx_domain::api::ErrorBody),
    /// `upload-not-found`.
    #[response(status = 404)]
    NotFound(vtx_domain::api::ErrorBody),
    /// `tus-offset-mismatch`, `upload-completed`.
    #[response(status = 409)]
    Conflict(vtx_domain::api::ErrorBody),
    /// `upload-expired`.
    #[response(status = 410)]
    Gone(vtx_domain::api::ErrorBody),
    /// `length-required`.
    #[response(status = 411)]
    LengthRequired(vtx_domain::api::ErrorBody),
    /// `tus-version`: the client's Tus-Resumable is not 1.0.0.
    #[response(status = 412)]
    PreconditionFailed(vtx_domain::api::ErrorBody),
    /// `upload-too-large`, `tus-beyond-length`.
    #[response(status = 413)]
    TooLarge(vtx_domain::api::ErrorBody),
    /// `tus-content-type`.
    #[response(status = 415)]
    UnsupportedMediaType(vtx_domain::api::ErrorBody),
    /// `checksum-mismatch`.
    #[response(status = 460)]
    ChecksumMismatch(vtx_domain::api::ErrorBody),
}

#[utoipa::path(
    options,
    path = "/v1/tus",
    operation_id = "tus_options",
    tag = "tus",
    summary = "tus discovery: version, extensions, checksums, largest size.",
    security(()),
    responses(
        (status = 204, description = "Tus-Version, Tus-Extension, Tus-Checksum-Algorithm, Tus-Max-Size.")
    )
)]
pub async fn options(State(state): State<AppState>) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (h("tus-version"), VERSION.to_string()),
            (h("tus-extension"), EXTENSIONS.to_string()),
            (h("tus-checksum-algorithm"), CHECKSUMS.to_string()),
            (h("tus-max-size"), state.limits.max_upload_bytes.to_string()),
        ],
    )
        .into_response()
}

#[utoipa::path(
    post,
    path = "/v1/tus",
    operation_id = "tus_create",
    tag = "tus",
    summary = "tus creation (and creation-with-upload, creation-defer-length).",
    params(("Tus-Resumable" = String, Header, description = "1.0.0"), ("Upload-Length" = Option<u64>, Header, description = "Total bytes."), ("Upload-Defer-Length" = Option<u8>, Header, description = "1 when the length comes later."), ("Upload-Metadata" = Option<String>, Header, description = "tus metadata.")),
    request_body(content = Option<Vec<u8>>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 201, description = "Created; `Location` names the upload."),
        TusFailures,
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
        (status = 429, description = "A grant's limits.", body = vtx_domain::api::ErrorBody)
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_version(&headers)?;
    let (grant, followers) = caller.may_create_upload(None)?;
    crate::grants::admit_session(&state, grant).await?;
    let bad = |code, msg: &str| ApiError::bad_request(code, msg);
    if headers.contains_key("upload-defer-length") {
        return Err(bad(
            "tus-defer-length",
            "Upload-Defer-Length is not supported; send Upload-Length",
        ));
    }
    let length = match header_u64(&headers, "upload-length") {
        Some(Ok(n)) => n,
        Some(Err(())) => return Err(bad("tus-upload-length", "Upload-Length must be a number")),
        None => return Err(bad("tus-upload-length", "send Upload-Length")),
    };
    if length == 0 {
        return Err(bad("empty-upload", "a video holds at least one byte"));
    }
    if length > state.limits.max_upload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload-too-large",
            format!(
                "an upload may hold at most {} bytes",
                state.limits.max_upload_bytes
            ),
        ));
    }
    let metadata = match headers.get("upload-metadata") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| s.len() <= MAX_METADATA)
                .ok_or_else(|| {
                    bad(
                        "tus-metadata",
                        "Upload-Metadata must be ASCII and at most 4 KiB",
                    )
                })?
                .to_string(),
        ),
    };
    let signed_playback = match metadata.as_deref() {
        Some(m) => signed_playback_of(m)?.unwrap_or(false),
        None => false,
    };
    let id = UploadId::new();

    let row = db::create_tus_upload(
        &state.pool,
        &db::NewTusUpload {
            id,
            expires_at: session_expiry(&state)?,
            grant_id: grant,
            followers,
            length,
            metadata: metadata.as_deref(),
            signed_playback,
        },
    )
    .await?;
    tracing::info!(upload_id = %id, length, "tus upload created");
    let token = state.auth.upload_token(id, row.expires_at);
    Ok((
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                format!("{}/v1/tus/{id}", state.public_url),
            ),
            expires(&row),
            (h("vtx-upload-token"), token),
        ],
    )
        .into_response())
}

/// The `signed_playback` key of `Upload-Metadata` (`key base64(value),...`): `true` or
/// `false` (a key without a value is `true`); `None` when absent.
fn signed_playback_of(metadata: &str) -> ApiResult<Option<bool>> {
    let bad = || {
        ApiError::bad_request(
            "tus-metadata",
            "signed_playback in Upload-Metadata must be base64 of `true` or `false`",
        )
    };
    for pair in metadata.split(',') {
        let mut parts = pair.trim().splitn(2, ' ');
        if parts.next() != Some("signed_playback") {
            continue;
        }
        return match parts.next().map(str::trim) {
            None | Some("") => Ok(Some(true)),
            Some(value) => match B64.decode(value).map_err(|_| bad())?.as_slice() {
                b"true" => Ok(Some(true)),
                b"false" => Ok(Some(false)),
                _ => Err(bad()),
            },
        };
    }
    Ok(None)
}

/// The upload behind a tus URL: 404 for unknown ids and chunked uploads, 410 once it has
/// expired or been terminated.
async fn tus_upload(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<UploadRow> {
    let id: UploadId = parse_id(raw, "upload-not-found", "upload")?;
    let row = load_upload(state, caller, id).await?;
    if row.protocol != "tus" {
        return Err(ApiError::not_found("upload-not-found", "tus upload"));
    }
    let gone = match row.state {
        UploadState::Aborted | UploadState::Expired => true,
        UploadState::Open => row.expires_at <= chrono::Utc::now(),
        UploadState::Completed => false,
    };
    if gone {
        return Err(ApiError::new(
            StatusCode::GONE,
            "upload-expired",
            "the upload has expired or was terminated",
        ));
    }
    Ok(row)
}

/// Headers that tell where an upload stands; a finished one also names its video.
async fn position(
    state: &AppState,
    row: &UploadRow,
    offset: u64,
) -> ApiResult<Vec<(HeaderName, String)>> {
    let mut out = vec![
        (h("upload-offset"), offset.to_string()),
        expires(row),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ];
    if let Some(len) = row.upload_length {
        out.push((h("upload-length"), len.to_string()));
    }
    if let Some(m) = &row.metadata {
        out.push((h("upload-metadata"), m.clone()));
    }
    if row.state == UploadState::Completed {
        let mut conn = state.pool.acquire().await?;
        if let Some((video, job)) =
            db::video_for_upload(&mut conn, UploadId::from_uuid(row.id)).await?
        {
            out.push((h("vtx-video-id"), video.to_string()));
            out.push((h("vtx-job-id"), job.to_string()));
        }
    }
    Ok(out)
}

fn with_headers(status: StatusCode, headers: Vec<(HeaderName, String)>) -> Response {
    let mut resp = status.into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

#[utoipa::path(
    head,
    path = "/v1/tus/{id}",
    operation_id = "tus_head",
    tag = "tus",
    summary = "tus offset of an upload.",
    params(("id" = String, Path, description = "The upload id (a UUID).")),
    responses(
        (status = 200, description = "Upload-Offset, Upload-Length."),
        TusFailures,
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
    )
)]
pub async fn head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_version(&headers)?;
    let row = tus_upload(&state, &caller, &id).await?;
    let (_, offset) = db::upload_parts(&state.pool, UploadId::from_uuid(row.id)).await?;
    let hs = position(&state, &row, offset as u64).await?;
    Ok(with_headers(StatusCode::OK, hs))
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
enum Checksum {
    Sha1([u8; 20]),
    Sha256(String),
}

fn parse_checksum(headers: &HeaderMap) -> ApiResult<Option<Checksum>> {
    let Some(v) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "tus-checksum",
            "Upload-Checksum must be `sha1 <base64>` or `sha256 <base64>`",
        )
    };
    let (algo, digest) = v
        .to_str()
        .ok()
        .and_then(|s| s.split_once(' '))
        .ok_or_else(bad)?;
    let digest = B64.decode(digest.trim()).map_err(|_| bad())?;
    match algo {
        "sha1" => Ok(Some(Checksum::Sha1(digest.try_into().map_err(|_| bad())?))),
        "sha256" if digest.len() == 32 => Ok(Some(Checksum::Sha256(hex::encode(digest)))),
        _ => Err(bad()),
    }
}

#[utoipa::path(
    patch,
    path = "/v1/tus/{id}",
    operation_id = "tus_patch",
    tag = "tus",
    summary = "tus: append bytes at Upload-Offset.",
    params(("id" = String, Path, description = "The upload id (a UUID)."), ("Upload-Offset" = u64, Header, description = "Where the bytes go.")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Stored; Upload-Offset is the new offset."),
        TusFailures,
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
        (status = 408, description = "`body-timeout`.", body = vtx_domain::api::ErrorBody)
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_version(&headers)?;
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "tus-content-type",
            "PATCH bodies are application/offset+octet-stream",
        ));
    }
    let row = tus_upload(&state, &caller, &id).await?;
    let upload = UploadId::from_uuid(row.id);
    let claimed = match header_u64(&headers, "upload-offset") {
        Some(Ok(n)) => n,
        _ => {
            return Err(ApiError::bad_request(
                "tus-upload-offset",
                "send Upload-Offset",
            ));
        }
    };
    let (parts, offset) = db::upload_parts(&state.pool, upload).await?;
    let offset = offset as u64;
    if claimed != offset || row.state == UploadState::Completed {
        return Err(ApiError::conflict(
            "tus-offset-mismatch",
            format!("the upload's offset is {offset}"),
        ));
    }
    let length = row.upload_length.unwrap_or(0) as u64;
    let len = match header_u64(&headers, "content-length") {
        Some(Ok(n)) => n,
        _ => {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length-required",
                "send a Content-Length header",
            ));
        }
    };
    if offset + len > length {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "tus-beyond-length",
            format!("the body runs past Upload-Length ({length})"),
        ));
    }
    // Parts have a floor (but the last), so an upload cannot be split into a flood of tiny
    // requests, rows and objects; a long upload's floor rises so it needs at most the maximum.
    let min_part = state
        .limits
        .tus_min_part_bytes
        .max(length.div_ceil(state.limits.tus_max_parts));
    if len > 0 && len < min_part && offset + len != length {
        return Err(ApiError::bad_request(
            "tus-part-too-small",
            format!("a part but the last must hold at least {min_part} bytes"),
        ));
    }
    if parts.max(0) as u64 >= state.limits.tus_max_parts {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "tus-too-many-parts",
            format!(
                "an upload may arrive in at most {} parts",
                state.limits.tus_max_parts
            ),
        ));
    }
    let checksum = parse_checksum(&headers)?;
    let _in_flight = crate::grants::admit_body(&state, row.grant_id, len)?;
    let mut new_offset = offset;
    if len > 0 {
        let object = Staged::new(
            &state.store,
            keys::upload_part(upload, parts as u32, uuid::Uuid::new_v4()),
        );
        let want_sha1 = matches!(checksum, Some(Checksum::Sha1(_)));
        let Streamed { sha256, sha1, .. } =
            match stream_to_store(&state, &object, len, body, None, want_sha1).await {
                Ok(streamed) => streamed,
                Err(e) => {
                    object.discard().await;
                    return Err(e);
                }
            };
        let matches = match &checksum {
            None => true,
            Some(Checksum::Sha1(d)) => sha1.as_ref() == Some(d),
            Some(Checksum::Sha256(d)) => *d == sha256,
        };
        if !matches {
            object.discard().await;
            // 460 is tus's own status for a checksum mismatch.
            let status = StatusCode::from_u16(460).expect("valid status");
            return Err(ApiError::new(
                status,
                "checksum-mismatch",
                "the body does not match Upload-Checksum; nothing was stored",
            ));
        }
        let caps = db::UploadCaps {
            max_bytes: length,
            max_seconds: f64::INFINITY,
            encode_ahead_seconds: 0.0,
        };
        match db::insert_chunk(
            &state.pool,
            upload,
            parts as u32,
            len,
            &sha256,
            object.key(),
            None,
            caps,
        )
        .await
        {
            Ok(Some(ChunkInsert::OverBytes | ChunkInsert::OverSeconds)) => {
                object.discard().await;
                return Err(ApiError::conflict(
                    "tus-offset-mismatch",
                    "another request wrote at this offset",
                ));
            }
            Ok(Some(ChunkInsert::Stored)) => {
                object.keep();
                new_offset = offset + len;
            }
            Ok(Some(ChunkInsert::Existing(_))) => {
                // Another PATCH at the same offset won the race.
                object.discard().await;
                return Err(ApiError::conflict(
                    "tus-offset-mismatch",
                    "another request wrote at this offset",
                ));
            }
            Ok(None) => {
                object.discard().await;
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "upload-expired",
                    "the upload has expired or was terminated",
                ));
            }
            Err(e) => {
                object.discard().await;
                return Err(e.into());
            }
        }
    }
    let mut row = row;
    if new_offset == length {
        finish_upload(&state, upload, None).await?;
        row.state = UploadState::Completed;
        tracing::info!(upload_id = %upload, bytes = length, "tus upload finished");
    }
    let hs = position(&state, &row, new_offset).await?;
    Ok(with_headers(StatusCode::NO_CONTENT, hs))
}

#[utoipa::path(
    delete,
    path = "/v1/tus/{id}",
    operation_id = "tus_terminate",
    tag = "tus",
    summary = "tus termination.",
    params(("id" = String, Path, description = "The upload id (a UUID).")),
    responses(
        (status = 204, description = "Terminated."),
        TusFailures,
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
    )
)]
pub async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_version(&headers)?;
    let row = tus_upload(&state, &caller, &id).await?;
    if row.state == UploadState::Completed {
        return Err(ApiError::conflict(
            "upload-completed",
            "the upload is complete; its video exists",
        ));
    }
    db::end_upload(
        &state.pool,
        UploadId::from_uuid(row.id),
        UploadState::Aborted,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_playback_is_read_from_the_tus_metadata() {
        let b64 = |s: &str| B64.encode(s);
        let of = |m: &str| signed_playback_of(m).map_err(|e| e.code);
        assert_eq!(of(&format!("filename {}", b64("a.mp4"))), Ok(None));
        assert_eq!(
            of(&format!(
                "filename {},signed_playback {}",
                b64("a.mp4"),
                b64("true")
            )),
            Ok(Some(true))
        );
        assert_eq!(
            of(&format!("signed_playback {}", b64("false"))),
            Ok(Some(false))
        );
        assert_eq!(of("signed_playback"), Ok(Some(true)));
        assert_eq!(
            of(&format!("signed_playback {}", b64("yes"))),
            Err("tus-metadata")
        );
        assert_eq!(of("signed_playback !!"), Err("tus-metadata"));
    }
}
