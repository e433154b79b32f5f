//! Upload sessions: create, store chunks (streamed to S3, checksummed, idempotent), inspect for
//! resume, complete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use vtx_domain::api::{
    ChunkView, CompleteRequest, CreateUpload, GrantIssued, GrantRequest, UploadCompleted,
    UploadCreated, UploadView,
};
use vtx_domain::{ChunkIndex, UploadId, UploadState, keys};
use vtx_infra::db::{self, UploadRow};

use crate::auth::{Caller, Claims, MAX_GRANT_TTL_SECS, TokenKind};
use crate::staged::Staged;
use crate::{ApiError, ApiResult, AppState, parse_id, rfc3339};

mod finish;
mod instant;
mod store;

pub(crate) use finish::finish_upload;
use store::*;
/// Optional request header with the hex SHA-256 of the chunk body.
pub const CHUNK_SHA256_HEADER: &str = "x-vtx-chunk-sha256";
/// Optional request header with the CRC32C (Castagnoli) of the chunk body, as 8 hex digits.
pub const CHUNK_CRC32C_HEADER: &str = "x-vtx-chunk-crc32c";

/// Mints a grant token for an app (internal services only).
#[utoipa::path(
    post,
    path = "/v1/upload-tokens",
    tag = "uploads",
    summary = "Mint a grant token for an app (service token).",
    request_body(content = Option<vtx_domain::api::GrantRequest>, content_type = "application/json"),
    responses(
        (status = 201, body = vtx_domain::api::GrantIssued),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-ttl`, `invalid-sub`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
    )
)]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    body: Option<Json<GrantRequest>>,
) -> ApiResult<(StatusCode, Json<GrantIssued>)> {
    caller.require_service()?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ttl = req.ttl_secs.unwrap_or(state.grant_ttl.as_secs());
    if ttl == 0 || ttl > MAX_GRANT_TTL_SECS {
        return Err(ApiError::bad_request(
            "invalid-ttl",
            format!("ttl_secs must be between 1 and {MAX_GRANT_TTL_SECS}"),
        ));
    }
    if req.sub.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(ApiError::bad_request(
            "invalid-sub",
            "sub may hold at most 256 bytes",
        ));
    }
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(ttl as i64);
    let token = state.auth.sign(&Claims {
        kind: TokenKind::Grant,
        id: uuid::Uuid::new_v4(),
        exp: expires_at.timestamp(),
        sub: req.sub,
        followers: req.followers,
    });
    Ok((
        StatusCode::CREATED,
        Json(GrantIssued {
            token,
            expires_at: rfc3339(expires_at),
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/uploads",
    operation_id = "create_upload",
    tag = "uploads",
    summary = "Open a chunked upload session (service, grant token).",
    request_body(content = Option<vtx_domain::api::CreateUpload>, content_type = "application/json"),
    responses(
        (status = 201, body = vtx_domain::api::UploadCreated),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-rotation`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 429, description = "A grant's limits: `too-many-open-uploads`, `too-many-uploads` (with `Retry-After`).", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Option<Json<CreateUpload>>,
) -> ApiResult<(StatusCode, Json<UploadCreated>)> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let (grant, followers) = caller.may_create_upload(req.followers)?;
    crate::grants::admit_session(&state, grant).await?;
    if req
        .rotation
        .is_some_and(|r| ![0, 90, 180, 270].contains(&r))
    {
        return Err(ApiError::bad_request(
            "invalid-rotation",
            "rotation must be 0, 90, 180 or 270",
        ));
    }
    let id = UploadId::new();

    let row = db::create_upload(
        &state.pool,
        &db::NewUpload {
            id,
            expires_at: session_expiry(&state)?,
            grant_id: grant,
            rotation: req.rotation,
            followers,
            live_ingest: state.live_ingest,
            signed_playback: req.signed_playback.unwrap_or(false),
        },
    )
    .await?;
    tracing::info!(upload_id = %id, grant = ?grant, "upload created");
    let upload_token = state.auth.upload_token(id, row.expires_at);
    Ok((
        StatusCode::CREATED,
        Json(UploadCreated {
            id,
            upload_token,
            expires_at: rfc3339(row.expires_at),
            max_chunk_bytes: state.limits.max_chunk_bytes,
            max_chunks: state.limits.max_chunks,
            max_upload_bytes: state.limits.max_upload_bytes,
        }),
    ))
}

/// When a session opened now expires.
pub(crate) fn session_expiry(state: &AppState) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    let ttl = chrono::Duration::from_std(state.limits.session_ttl).map_err(ApiError::internal)?;
    Ok(chrono::Utc::now() + ttl)
}

/// The upload, if it exists and `caller` may use it.
pub(crate) async fn load_upload(
    state: &AppState,
    caller: &Caller,
    id: UploadId,
) -> ApiResult<UploadRow> {
    let row = db::get_upload(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("upload-not-found", "upload"))?;
    caller.may_use_upload(id, row.grant_id)?;
    Ok(row)
}

async fn load_open_upload(state: &AppState, caller: &Caller, id: UploadId) -> ApiResult<UploadRow> {
    let row = load_upload(state, caller, id).await?;
    match row.state {
        UploadState::Open if row.expires_at <= chrono::Utc::now() => Err(ApiError::new(
            StatusCode::GONE,
            "upload-expired",
            "the upload session has expired; start a new one",
        )),
        UploadState::Open => Ok(row),
        UploadState::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "upload-expired",
            "the upload session has expired; start a new one",
        )),
        other => Err(ApiError::conflict(
            "upload-not-open",
            format!("the upload is {other}; it takes no more chunks"),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/uploads/{id}",
    operation_id = "show_upload",
    tag = "uploads",
    summary = "An upload session and its chunks.",
    params(("id" = String, Path, description = "The upload id (a UUID).")),
    responses(
        (status = 200, body = vtx_domain::api::UploadView),
        crate::openapi::AuthFailures,
        (status = 404, description = "`upload-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadView>> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    let row = load_upload(&state, &caller, id).await?;
    Ok(Json(upload_view(&state, row).await?))
}

/// An upload's status body (also what `upload.expired` webhooks carry).
pub(crate) async fn upload_view(state: &AppState, row: UploadRow) -> ApiResult<UploadView> {
    let id = UploadId::from_uuid(row.id);
    let mut conn = state.pool.acquire().await?;
    let chunks = db::list_chunks(&mut conn, id).await?;
    let ids = db::video_for_upload(&mut conn, id).await?;
    Ok(UploadView {
        id,
        state: row.state,
        expires_at: rfc3339(row.expires_at),
        bytes: chunks.iter().map(|c| c.size_bytes as u64).sum(),
        chunks: chunks
            .into_iter()
            .map(|c| ChunkView {
                index: c.idx as u32,
                size_bytes: c.size_bytes as u64,
                sha256: c.sha256,
            })
            .collect(),
        video_id: ids.map(|(v, _)| v),
        job_id: ids.map(|(_, j)| j),
    })
}

/// Stores chunk `index`. 201 when new, 200 when the same bytes were already stored, 409 when
/// different bytes hold that index.
#[utoipa::path(
    put,
    path = "/v1/uploads/{id}/chunks/{index}",
    operation_id = "put_chunk",
    tag = "uploads",
    summary = "Store one GOP-aligned MPEG-TS chunk.",
    params(("id" = String, Path, description = "The upload id (a UUID)."), ("index" = u32, Path, description = "The chunk's index, from 0."), ("x-vtx-chunk-sha256" = Option<String>, Header, description = "Hex SHA-256 of the body."), ("x-vtx-chunk-crc32c" = Option<String>, Header, description = "CRC32C of the body, 8 hex digits.")),
    request_body(content = Vec<u8>, content_type = "video/mp2t"),
    responses(
        (status = 201, description = "Stored.", body = vtx_domain::api::ChunkView),
        (status = 200, description = "The same bytes were already stored.", body = vtx_domain::api::ChunkView),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-chunk-index`, `empty-chunk`, `invalid-checksum`, `checksum-mismatch`, `length-mismatch`, `body-interrupted`, `wrong-protocol`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`upload-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 408, description = "`body-timeout`.", body = vtx_domain::api::ErrorBody),
        (status = 409, description = "`chunk-conflict` (other bytes hold this index), `upload-not-open`, `upload-completed`.", body = vtx_domain::api::ErrorBody),
        (status = 410, description = "`upload-expired`.", body = vtx_domain::api::ErrorBody),
        (status = 411, description = "`length-required`.", body = vtx_domain::api::ErrorBody),
        (status = 413, description = "`chunk-too-large`, `upload-too-large`.", body = vtx_domain::api::ErrorBody),
        (status = 422, description = "Not a GOP-aligned media chunk: `chunk-not-media`, `unsupported-codec`, `too-long`, `too-large`, `transcode-timeout`, ...", body = vtx_domain::api::ErrorBody),
        (status = 429, description = "`too-many-bytes-in-flight`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn put_chunk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ChunkView>)> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    let index = index
        .parse::<u32>()
        .ok()
        .filter(|n| *n < state.limits.max_chunks)
        .and_then(ChunkIndex::new)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-chunk-index",
                format!(
                    "chunk index must be a number below {}",
                    state.limits.max_chunks
                ),
            )
        })?;
    let row = load_open_upload(&state, &caller, id).await?;
    if row.protocol != "chunks" {
        return Err(ApiError::conflict(
            "wrong-protocol",
            "this is a tus upload; continue it at /v1/tus/{id}",
        ));
    }

    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length-required",
                "send a Content-Length header",
            )
        })?;
    if len == 0 {
        return Err(ApiError::bad_request(
            "empty-chunk",
            "a chunk must hold at least one byte",
        ));
    }
    if len > state.limits.max_chunk_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "chunk-too-large",
            format!(
                "a chunk may hold at most {} bytes",
                state.limits.max_chunk_bytes
            ),
        ));
    }
    let claimed_sha = match headers.get(CHUNK_SHA256_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::to_ascii_lowercase)
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-checksum",
                        format!("{CHUNK_SHA256_HEADER} must be 64 hex digits"),
                    )
                })?,
        ),
    };

    // A retry of a chunk we hold: answer without reading the body again.
    if let (Some(sha), Some(existing)) = (
        &claimed_sha,
        db::get_chunk(&state.pool, id, index.get()).await?,
    ) {
        return if &existing.sha256 == sha {
            Ok((
                StatusCode::OK,
                Json(chunk_view(
                    index,
                    existing.size_bytes as u64,
                    existing.sha256,
                )),
            ))
        } else {
            Err(chunk_conflict(index))
        };
    }
    // Early refusal; the cap itself holds when the chunk is recorded (`insert_chunk`).
    let stored = db::upload_bytes(&state.pool, id).await? as u64;
    if stored + len > state.limits.max_upload_bytes {
        return Err(upload_too_large(&state));
    }

    let claimed_crc = match headers.get(CHUNK_CRC32C_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| s.len() == 8)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-checksum",
                        format!("{CHUNK_CRC32C_HEADER} must be 8 hex digits"),
                    )
                })?,
        ),
    };

    let _in_flight = crate::grants::admit_body(&state, row.grant_id, len)?;
    let object = Staged::new(
        &state.store,
        keys::upload_part(id, index.get(), uuid::Uuid::new_v4()),
    );
    let claimed = Claimed {
        sha256: claimed_sha,
        crc32c: claimed_crc,
    };
    match store_chunk(&state, id, index, len, claimed, body, &object).await {
        Ok(ChunkStored::New(view)) => {
            object.keep();
            tracing::info!(upload_id = %id, index = index.get(), bytes = len, "chunk stored");
            metrics::counter!("vtx_chunks_stored_total").increment(1);
            metrics::counter!("vtx_chunk_bytes_total").increment(len);
            Ok((StatusCode::CREATED, Json(view)))
        }
        Ok(ChunkStored::Again(view)) => {
            object.discard().await;
            Ok((StatusCode::OK, Json(view)))
        }
        Err(e) => {
            object.discard().await;
            Err(e)
        }
    }
}

/// Aborts an open upload: it takes no more chunks and its stored chunks are deleted. Aborting
/// again is fine (204); a completed upload cannot be aborted (409).
#[utoipa::path(
    delete,
    path = "/v1/uploads/{id}",
    operation_id = "abort_upload",
    tag = "uploads",
    summary = "Abort an open upload; its chunks are deleted.",
    params(("id" = String, Path, description = "The upload id (a UUID).")),
    responses(
        (status = 204, description = "Aborted (or already ended)."),
        crate::openapi::AuthFailures,
        (status = 404, description = "`upload-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 409, description = "`upload-completed`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    let row = load_upload(&state, &caller, id).await?;
    match row.state {
        UploadState::Open => {
            db::end_upload(&state.pool, id, UploadState::Aborted).await?;
            tracing::info!(upload_id = %id, "upload aborted");
            Ok(StatusCode::NO_CONTENT)
        }
        UploadState::Aborted | UploadState::Expired => Ok(StatusCode::NO_CONTENT),
        UploadState::Completed => Err(ApiError::conflict(
            "upload-completed",
            "the upload is complete; its video exists",
        )),
    }
}

/// Assembles the source from the chunks, creates the video and its job, and queues the job, once.
/// Completing again returns the same ids.
#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/complete",
    operation_id = "complete_upload",
    tag = "uploads",
    summary = "Complete an upload: the video and its job exist (once).",
    params(("id" = String, Path, description = "The upload id (a UUID).")),
    request_body(content = Option<vtx_domain::api::CompleteRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "Completed now.", body = vtx_domain::api::UploadCompleted),
        (status = 200, description = "Completed before: the same ids.", body = vtx_domain::api::UploadCompleted),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `wrong-protocol`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`upload-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 409, description = "`upload-not-open`, `upload-changed`.", body = vtx_domain::api::ErrorBody),
        (status = 410, description = "`upload-expired`.", body = vtx_domain::api::ErrorBody),
        (status = 422, description = "`no-chunks`, `missing-chunks`, `chunks-not-contiguous`, `too-long`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<CompleteRequest>>,
) -> ApiResult<(StatusCode, Json<UploadCompleted>)> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    if load_upload(&state, &caller, id).await?.protocol != "chunks" {
        return Err(ApiError::conflict(
            "wrong-protocol",
            "a tus upload completes when its last byte arrives",
        ));
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let (status, done) = finish_upload(&state, id, req.chunks).await?;
    Ok((status, Json(done)))
}
