//! Upload sessions: create, store chunks (streamed to S3, checksummed, idempotent), inspect for
//! resume, complete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use vtx_domain::api::{
    ChunkView, CompleteRequest, CreateUpload, GrantIssued, GrantRequest, UploadCompleted,
    UploadCreated, UploadView,
};
use vtx_domain::{ChunkIndex, JobId, UploadId, UploadState, VideoId};
use vtx_infra::db::{self, ChunkInsert, UploadRow};

use crate::auth::{Caller, Claims, MAX_GRANT_TTL_SECS, TokenKind};
use crate::{ApiError, ApiResult, AppState, parse_id, rfc3339};

/// Optional request header with the hex SHA-256 of the chunk body.
pub const CHUNK_SHA256_HEADER: &str = "x-vtx-chunk-sha256";
/// Optional request header with the CRC32C (Castagnoli) of the chunk body, as 8 hex digits.
pub const CHUNK_CRC32C_HEADER: &str = "x-vtx-chunk-crc32c";

fn chunk_key(upload: UploadId, index: ChunkIndex, attempt: uuid::Uuid) -> String {
    // Each attempt writes its own object; the database decides which one counts.
    format!("uploads/{upload}/chunks/{:05}-{attempt}", index.get())
}

fn source_key(video: VideoId) -> String {
    format!("sources/{video}/source")
}

/// Mints a grant token for an app (internal services only).
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
        id,
        session_expiry(&state)?,
        grant,
        req.rotation,
        followers,
        state.pipeline_uploads,
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
    match row.state() {
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

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadView>> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    let row = load_upload(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let chunks = db::list_chunks(&mut conn, id).await?;
    let ids = db::video_for_upload(&mut conn, id).await?;
    Ok(Json(UploadView {
        id,
        state: row.state.clone(),
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
    }))
}

/// Stores chunk `index`. 201 when new, 200 when the same bytes were already stored, 409 when
/// different bytes hold that index.
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
    let key = chunk_key(id, index, uuid::Uuid::new_v4());
    let copy = tempfile::Builder::new()
        .prefix("vtx-chunk-")
        .suffix(".ts")
        .tempfile()
        .map_err(ApiError::internal)?
        .into_temp_path();
    let Streamed {
        sha256: sha,
        crc32c: crc,
        ..
    } = stream_to_store(&state, &key, len, body, Some(&copy), false).await?;
    if claimed_sha.as_ref().is_some_and(|c| c != &sha) || claimed_crc.is_some_and(|c| c != crc) {
        discard(&state, &key).await;
        return Err(ApiError::bad_request(
            "checksum-mismatch",
            "the chunk's checksum does not match the header; nothing was stored",
        ));
    }
    // Same bytes as a stored chunk: no need to check them again.
    if let Some(existing) = db::get_chunk(&state.pool, id, index.get()).await? {
        discard(&state, &key).await;
        return if existing.sha256 == sha {
            Ok((StatusCode::OK, Json(chunk_view(index, len, sha))))
        } else {
            Err(chunk_conflict(index))
        };
    }
    let info = match check_chunk(&state, copy).await {
        Ok(info) => info,
        Err(e) => {
            discard(&state, &key).await;
            return Err(e);
        }
    };
    let stored_seconds = db::upload_seconds(&state.pool, id).await?;
    let limit = state.inspector.limits().max_duration.as_secs_f64();
    if stored_seconds + (info.end_seconds - info.start_seconds) > limit {
        discard(&state, &key).await;
        return Err(upload_too_long(limit));
    }
    match db::insert_chunk(
        &state.pool,
        id,
        index.get(),
        len,
        &sha,
        &key,
        Some(&db::ChunkMedia {
            start_seconds: info.start_seconds,
            end_seconds: info.end_seconds,
            frames: info.frames as i32,
        }),
        db::UploadCaps {
            max_bytes: state.limits.max_upload_bytes,
            max_seconds: limit,
            encode_ahead_seconds: state.limits.encode_ahead_seconds,
        },
    )
    .await
    {
        Ok(Some(ChunkInsert::OverBytes)) => {
            discard(&state, &key).await;
            Err(upload_too_large(&state))
        }
        Ok(Some(ChunkInsert::OverSeconds)) => {
            discard(&state, &key).await;
            Err(upload_too_long(limit))
        }
        Ok(Some(ChunkInsert::Stored)) => {
            tracing::info!(upload_id = %id, index = index.get(), bytes = len, "chunk stored");
            metrics::counter!("vtx_chunks_stored_total").increment(1);
            metrics::counter!("vtx_chunk_bytes_total").increment(len);
            Ok((StatusCode::CREATED, Json(chunk_view(index, len, sha))))
        }
        Ok(Some(ChunkInsert::Existing(existing))) => {
            discard(&state, &key).await;
            if existing.sha256 == sha {
                Ok((StatusCode::OK, Json(chunk_view(index, len, sha))))
            } else {
                Err(chunk_conflict(index))
            }
        }
        Ok(None) => {
            discard(&state, &key).await;
            Err(ApiError::conflict(
                "upload-not-open",
                "the upload takes no more chunks",
            ))
        }
        Err(e) => {
            discard(&state, &key).await;
            Err(e.into())
        }
    }
}

/// Checks a chunk's bytes in a child process under the media and memory limits and a time
/// limit: 422 `chunk-not-media` or `chunk-not-gop-aligned` (or the media error's own code).
async fn check_chunk(
    state: &AppState,
    copy: tempfile::TempPath,
) -> ApiResult<vtx_media::ChunkInfo> {
    let _permit = state
        .chunk_checks
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let checked = state.inspector.inspect(&copy).await;
    drop(copy);
    checked.inspect_err(|err| {
        if err.status.is_client_error() {
            metrics::counter!("vtx_chunks_refused_total", "code" => err.code).increment(1);
        }
    })
}

/// The first chunk whose video does not start where the one before it ends (within half a
/// second, which tolerates a dropped frame but not chunks of two different videos).
fn discontinuity(chunks: &[db::ChunkRow]) -> Option<u32> {
    chunks
        .windows(2)
        .find_map(|w| match (w[0].end_seconds, w[1].start_seconds) {
            (Some(end), Some(start)) if (start - end).abs() > 0.5 => Some(w[1].idx as u32),
            _ => None,
        })
}

fn upload_too_large(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload-too-large",
        format!(
            "an upload may hold at most {} bytes",
            state.limits.max_upload_bytes
        ),
    )
}

fn upload_too_long(limit: f64) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too-long",
        format!("an upload may last at most {limit} s"),
    )
}

fn chunk_view(index: ChunkIndex, size: u64, sha256: String) -> ChunkView {
    ChunkView {
        index: index.get(),
        size_bytes: size,
        sha256,
    }
}

fn chunk_conflict(index: ChunkIndex) -> ApiError {
    ApiError::conflict(
        "chunk-conflict",
        format!("chunk {index} is already stored with different bytes"),
    )
}

pub(crate) async fn discard(state: &AppState, key: &str) {
    if let Err(e) = state.store.delete(key).await {
        tracing::warn!(key, error = %e, "could not delete a discarded chunk object");
    }
}

/// What streaming a body gave: its checksums.
pub(crate) struct Streamed {
    pub sha256: String,
    pub crc32c: u32,
    pub sha1: Option<[u8; 20]>,
}

/// Streams the request body into the store and into `copy` (a local file the chunk is checked
/// from) while hashing it; returns the hex SHA-256 and the CRC32C. Memory stays bounded: the
/// channel holds a few body frames at most.
pub(crate) async fn stream_to_store(
    state: &AppState,
    key: &str,
    len: u64,
    body: Body,
    copy: Option<&std::path::Path>,
    want_sha1: bool,
) -> ApiResult<Streamed> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let mut file = match copy {
        // Unbuffered: body frames are already tens of KiB, and a buffer per request adds up
        // over a thousand concurrent uploads.
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let (idle, total) = (state.limits.body_idle, state.limits.body_total);
    let pump = async move {
        let mut hasher = Sha256::new();
        let mut sha1 = want_sha1.then(sha1::Sha1::new);
        let mut crc = 0u32;
        let mut seen = 0u64;
        let mut stream = body.into_data_stream();
        let until = tokio::time::Instant::now() + total;
        let timed_out =
            |what: String| ApiError::new(StatusCode::REQUEST_TIMEOUT, "body-timeout", what);
        loop {
            // However slowly a body comes, it comes: only silence, or more than the total
            // allowed, ends it.
            let wait = idle.min(until.saturating_duration_since(tokio::time::Instant::now()));
            let frame = match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    let _ = tx.send(Err(std::io::Error::other("body timed out"))).await;
                    return Err(if tokio::time::Instant::now() >= until {
                        timed_out(format!(
                            "the body took longer than {} s (received {seen} of {len} bytes)",
                            total.as_secs()
                        ))
                    } else {
                        timed_out(format!(
                            "the body sent nothing for {} s (received {seen} of {len} bytes)",
                            idle.as_secs()
                        ))
                    });
                }
            };
            let bytes = match frame {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return Err(ApiError::bad_request(
                        "body-interrupted",
                        "the request body ended early",
                    ));
                }
            };
            seen += bytes.len() as u64;
            if seen > len {
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "body longer than Content-Length",
                    )))
                    .await;
                return Err(ApiError::bad_request(
                    "length-mismatch",
                    "the body is longer than Content-Length",
                ));
            }
            hasher.update(&bytes);
            crc = crc32c::crc32c_append(crc, &bytes);
            if let Some(h) = sha1.as_mut() {
                h.update(&bytes);
            }
            if let Some(f) = file.as_mut() {
                f.write_all(&bytes).await.map_err(ApiError::internal)?;
            }
            if tx.send(Ok(bytes)).await.is_err() {
                return Ok(None); // the store gave up; its error is reported below
            }
        }
        if seen != len {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "body shorter than Content-Length",
                )))
                .await;
            return Err(ApiError::bad_request(
                "length-mismatch",
                "the body is shorter than Content-Length",
            ));
        }
        if let Some(f) = file.as_mut() {
            f.flush().await.map_err(ApiError::internal)?;
        }
        Ok(Some(Streamed {
            sha256: hex::encode(hasher.finalize()),
            crc32c: crc,
            sha1: sha1.map(|h| h.finalize().into()),
        }))
    };
    let put = state
        .store
        .put_stream(key, len, rx, "application/octet-stream");
    let (hashed, stored) = tokio::join!(pump, put);
    match (hashed, stored) {
        (Ok(Some(sha)), Ok(())) => Ok(sha),
        // The store failed (and stopped taking the body): a storage error, not the client's.
        (Ok(_), Err(e)) => {
            discard(state, key).await;
            Err(ApiError::storage(e))
        }
        (Ok(None), Ok(())) => {
            discard(state, key).await;
            Err(ApiError::internal("the store stopped taking the body"))
        }
        (Err(e), _) => {
            discard(state, key).await;
            Err(e)
        }
    }
}

/// Aborts an open upload: it takes no more chunks and its stored chunks are deleted. Aborting
/// again is fine (204); a completed upload cannot be aborted (409).
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: UploadId = parse_id(&id, "upload-not-found", "upload")?;
    let row = load_upload(&state, &caller, id).await?;
    match row.state() {
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

/// Assembles the source from the stored chunks (or tus parts), creates the video and its job
/// and queues the job, once: 202 the first time, 200 with the same ids after. `expected` is
/// the chunk count the client claims; any gap is refused.
pub(crate) async fn finish_upload(
    state: &AppState,
    id: UploadId,
    expected: Option<u32>,
) -> ApiResult<(StatusCode, UploadCompleted)> {
    let mut tx = state.pool.begin().await?;
    let upload = db::lock_upload(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("upload-not-found", "upload"))?;
    match upload.state() {
        UploadState::Completed => {
            let (video_id, job_id) = db::video_for_upload(&mut tx, id)
                .await?
                .ok_or_else(|| ApiError::internal("completed upload without a video"))?;
            let source_bytes = db::upload_bytes(&state.pool, id).await? as u64;
            return Ok((
                StatusCode::OK,
                UploadCompleted {
                    video_id,
                    job_id,
                    source_bytes,
                },
            ));
        }
        UploadState::Aborted | UploadState::Expired => {
            return Err(ApiError::conflict(
                "upload-not-open",
                format!("the upload is {}", upload.state),
            ));
        }
        UploadState::Open if upload.expires_at <= chrono::Utc::now() => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "upload-expired",
                "the upload session has expired",
            ));
        }
        UploadState::Open => {}
    }
    let chunks = db::list_chunks(&mut tx, id).await?;
    if chunks.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-chunks",
            "the upload holds no chunks",
        ));
    }
    let expected = expected.unwrap_or(chunks.len() as u32);
    let missing: Vec<u32> = (0..expected)
        .filter(|i| {
            chunks
                .binary_search_by_key(&(*i as i32), |c| c.idx)
                .is_err()
        })
        .take(50)
        .collect();
    let extra = chunks.iter().any(|c| c.idx as u32 >= expected);
    if !missing.is_empty() || extra {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing-chunks",
            if extra {
                format!("the upload holds chunks at or beyond index {expected}")
            } else {
                format!("chunks missing: {missing:?}")
            },
        ));
    }

    if let Some(at) = discontinuity(&chunks) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunks-not-contiguous",
            format!(
                "chunk {at} does not continue where chunk {} ends: the chunks are not one video",
                at - 1
            ),
        ));
    }

    let reserved = db::pipelined_ids(&mut tx, id).await?;
    if let Some((video, job, true)) = reserved {
        // Every chunk is encoded, or being encoded, as it arrived: completing only queues the
        // publication (at once if the last encode is done, else when it is). The source is
        // assembled later, for the tiers after the first.
        let bytes = chunks.iter().map(|c| c.size_bytes.max(0) as u64).sum();
        let source = source_key(video);
        db::complete_pipelined_upload(&mut tx, id, video, job, &source, bytes, expected).await?;
        tx.commit().await?;
        tracing::info!(upload_id = %id, video_id = %video, job_id = %job, bytes, "upload completed (pipelined)");
        return Ok((
            StatusCode::ACCEPTED,
            UploadCompleted {
                video_id: video,
                job_id: job,
                source_bytes: bytes,
            },
        ));
    }
    // Reserved ids are kept when falling back to the ordinary path (a chunk's encode failed).
    let (video, job) = match reserved {
        Some((video, job, _)) => (video, job),
        None => (VideoId::new(), JobId::new()),
    };
    let source = source_key(video);
    let keys: Vec<String> = chunks.iter().map(|c| c.object_key.clone()).collect();
    // Assembling copies every byte in the object store and may take a while: it runs with no
    // transaction open and no row locked. Then the upload is locked again and must be as it
    // was.
    tx.rollback().await?;
    let assembled = state
        .store
        .concat(&keys, &source, "application/octet-stream")
        .await;
    let mut tx = state.pool.begin().await?;
    let upload = db::lock_upload(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("upload-not-found", "upload"))?;
    // A completion that won meanwhile may already have removed the chunks this one was reading.
    let bytes = match assembled {
        Ok(bytes) => bytes,
        Err(_) if upload.state() == UploadState::Completed => 0,
        Err(e) => {
            discard(state, &source).await;
            return Err(ApiError::storage(e));
        }
    };
    if upload.state() != UploadState::Open {
        // Another completion (or an abort) got there first.
        let won = match upload.state() {
            UploadState::Completed => db::video_for_upload(&mut tx, id).await?,
            _ => None,
        };
        if won.is_none_or(|(v, _)| v != video) {
            discard(state, &source).await;
        }
        return match won {
            Some((video_id, job_id)) => Ok((
                StatusCode::OK,
                UploadCompleted {
                    video_id,
                    job_id,
                    source_bytes: db::upload_bytes(&state.pool, id).await? as u64,
                },
            )),
            None => Err(ApiError::conflict(
                "upload-not-open",
                format!("the upload is {}", upload.state),
            )),
        };
    }
    let now: Vec<String> = db::list_chunks(&mut tx, id)
        .await?
        .into_iter()
        .map(|c| c.object_key)
        .collect();
    if now != keys {
        discard(state, &source).await;
        return Err(ApiError::conflict(
            "upload-changed",
            "chunks arrived while the upload was being assembled; complete it again",
        ));
    }
    let committed = match db::complete_upload(&mut tx, id, video, job, &source, bytes).await {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        // Nothing refers to the assembled source: remove it, the client may complete again.
        discard(state, &source).await;
        return Err(e.into());
    }
    tracing::info!(upload_id = %id, video_id = %video, job_id = %job, bytes, "upload completed");

    // The source now holds every byte; the chunk objects are no longer needed.
    let store = state.store.clone();
    tokio::spawn(async move {
        for key in keys {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(key, error = %e, "could not delete a chunk after assembly");
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        UploadCompleted {
            video_id: video,
            job_id: job,
            source_bytes: bytes,
        },
    ))
}
