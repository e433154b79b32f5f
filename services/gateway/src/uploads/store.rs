//! Storing one chunk: its body streamed into the store, its media checked in a child process,
//! recorded under the upload's caps.

use axum::body::Body;
use axum::http::StatusCode;
use vtx_domain::ChunkIndex;
use vtx_domain::UploadId;
use vtx_domain::api::ChunkView;
use vtx_infra::db::{self, ChunkInsert};

use super::instant;
use crate::body::{Streamed, stream_to_store};
use crate::inspect::{Instant, InstantRequest};
use crate::staged::Staged;
use crate::{ApiError, ApiResult, AppState};

/// The checksums a client sent with a chunk.
pub(super) struct Claimed {
    pub(super) sha256: Option<String>,
    pub(super) crc32c: Option<u32>,
}

/// What storing a chunk came to.
pub(super) enum ChunkStored {
    /// Recorded: the object is the chunk's.
    New(ChunkView),
    /// The same bytes were already recorded: this copy is not needed.
    Again(ChunkView),
}

/// Streams a chunk's body into `object`, checks its media and records it under the upload's
/// caps. Whatever it returns, the caller keeps or discards `object`.
pub(super) async fn store_chunk(
    state: &AppState,
    id: UploadId,
    index: ChunkIndex,
    len: u64,
    claimed: Claimed,
    body: Body,
    object: &Staged,
) -> ApiResult<ChunkStored> {
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
    } = stream_to_store(state, object, len, body, Some(&copy), false).await?;
    if claimed.sha256.as_ref().is_some_and(|c| c != &sha)
        || claimed.crc32c.is_some_and(|c| c != crc)
    {
        return Err(ApiError::bad_request(
            "checksum-mismatch",
            "the chunk's checksum does not match the header; nothing was stored",
        ));
    }
    let again = |existing: db::ChunkRow, sha: String| {
        if existing.sha256 == sha {
            Ok(ChunkStored::Again(chunk_view(index, len, sha)))
        } else {
            Err(chunk_conflict(index))
        }
    };
    // Same bytes as a stored chunk: no need to check them again.
    if let Some(existing) = db::get_chunk(&state.pool, id, index.get()).await? {
        return again(existing, sha);
    }
    let target = instant::target(state, id).await?;
    // Without a scratch directory the chunk is checked as ever, only not remuxed.
    let remux_dir = target.as_ref().and_then(|_| tempfile::tempdir().ok());
    let request = match (state.instant.as_ref(), remux_dir.as_ref()) {
        (Some(policy), Some(dir)) => Some(InstantRequest {
            policy,
            out_dir: dir.path(),
            cover: index.get() == 0,
        }),
        _ => None,
    };
    let (info, remuxed) = check_chunk(state, copy, request).await?;
    let stored_seconds = db::upload_seconds(&state.pool, id).await?;
    let limit = state.inspector.limits().max_duration.as_secs_f64();
    if stored_seconds + (info.end_seconds - info.start_seconds) > limit {
        return Err(upload_too_long(limit));
    }
    let media = db::ChunkMedia {
        start_seconds: info.start_seconds,
        end_seconds: info.end_seconds,
        frames: info.frames as i32,
    };
    let caps = db::UploadCaps {
        max_bytes: state.limits.max_upload_bytes,
        max_seconds: limit,
        encode_ahead_seconds: state.limits.encode_ahead_seconds,
    };
    let inserted = db::insert_chunk(
        &state.pool,
        id,
        index.get(),
        len,
        &sha,
        object.key(),
        Some(&media),
        caps,
    )
    .await?;
    match inserted {
        Some(ChunkInsert::Stored) => {
            // Only the attempt that was recorded stores its remux (so a refused or losing
            // attempt leaves nothing behind).
            if let (Some(target), Some(outcome), Some(dir)) = (target, remuxed, remux_dir) {
                instant::store_remux(state, &target, id, index, outcome, dir.path()).await;
            }
            Ok(ChunkStored::New(chunk_view(index, len, sha)))
        }
        Some(ChunkInsert::OverBytes) => Err(upload_too_large(state)),
        Some(ChunkInsert::OverSeconds) => Err(upload_too_long(limit)),
        Some(ChunkInsert::Existing(existing)) => again(existing, sha),
        None => Err(ApiError::conflict(
            "upload-not-open",
            "the upload takes no more chunks",
        )),
    }
}

/// Checks a chunk's bytes in a child process under the media and memory limits and a time
/// limit: 422 `chunk-not-media` or `chunk-not-gop-aligned` (or the media error's own code).
pub(super) async fn check_chunk(
    state: &AppState,
    copy: tempfile::TempPath,
    instant: Option<InstantRequest<'_>>,
) -> ApiResult<(vtx_media::ChunkInfo, Option<Instant>)> {
    let _permit = state
        .chunk_checks
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let checked = state.inspector.inspect(&copy, instant).await;
    drop(copy);
    checked.inspect_err(|err| {
        if err.status.is_client_error() {
            metrics::counter!("vtx_chunks_refused_total", "code" => err.code).increment(1);
        }
    })
}

pub(super) fn upload_too_large(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload-too-large",
        format!(
            "an upload may hold at most {} bytes",
            state.limits.max_upload_bytes
        ),
    )
}

pub(super) fn upload_too_long(limit: f64) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too-long",
        format!("an upload may last at most {limit} s"),
    )
}

pub(super) fn chunk_view(index: ChunkIndex, size: u64, sha256: String) -> ChunkView {
    ChunkView {
        index: index.get(),
        size_bytes: size,
        sha256,
    }
}

pub(super) fn chunk_conflict(index: ChunkIndex) -> ApiError {
    ApiError::conflict(
        "chunk-conflict",
        format!("chunk {index} is already stored with different bytes"),
    )
}
