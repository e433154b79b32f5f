//! Completing an upload: the parts checked for gaps and continuity, the source assembled
//! outside any transaction, the video and its first job created once.

use axum::http::StatusCode;
use vtx_domain::api::UploadCompleted;
use vtx_domain::{JobId, UploadId, UploadState, VideoId, keys};
use vtx_infra::db;

use crate::staged::Staged;
use crate::{ApiError, ApiResult, AppState};

/// The first chunk whose video does not start where the one before it ends (within half a
/// second, which tolerates a dropped frame but not chunks of two different videos).
pub(super) fn discontinuity(chunks: &[db::ChunkRow]) -> Option<u32> {
    chunks
        .windows(2)
        .find_map(|w| match (w[0].end_seconds, w[1].start_seconds) {
            (Some(end), Some(start)) if (start - end).abs() > 0.5 => Some(w[1].idx as u32),
            _ => None,
        })
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
    match upload.state {
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

    let reserved = db::live_ingest_ids(&mut tx, id).await?;
    if let Some((video, job, true)) = reserved {
        // Every chunk is encoded, or being encoded, as it arrived: completing only queues the
        // publication (at once if the last encode is done, else when it is). The source is
        // assembled later, for the tiers after the first.
        let bytes = chunks.iter().map(|c| c.size_bytes.max(0) as u64).sum();
        let source = keys::source(video);
        db::complete_live_ingest_upload(&mut tx, id, video, job, &source, bytes, expected).await?;
        let instant = super::instant::publish(state, &mut tx, id, video, job).await?;
        tx.commit().await?;
        if instant {
            // Counted as the workers count a tier going live: from the job's creation (here).
            metrics::counter!("vtx_tiers_live_total", "tier" => "instant").increment(1);
            metrics::histogram!("vtx_publish_seconds", "tier" => "instant").record(0.0);
            tracing::info!(upload_id = %id, video_id = %video, "published at once (instant tier)");
        }
        tracing::info!(upload_id = %id, video_id = %video, job_id = %job, bytes, "upload completed (live ingest)");
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
    let source = Staged::new(&state.store, keys::source(video));
    let parts: Vec<String> = chunks.iter().map(|c| c.object_key.clone()).collect();
    // Assembling copies every byte in the object store and may take a while: it runs with no
    // transaction open and no row locked. Then the upload is locked again and must be as it
    // was.
    tx.rollback().await?;
    let assembled = state
        .store
        .concat(&parts, source.key(), "application/octet-stream")
        .await;
    let mut tx = state.pool.begin().await?;
    let upload = db::lock_upload(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("upload-not-found", "upload"))?;
    // A completion that won meanwhile may already have removed the chunks this one was reading.
    let bytes = match assembled {
        Ok(bytes) => bytes,
        Err(_) if upload.state == UploadState::Completed => 0,
        Err(e) => {
            source.discard().await;
            return Err(ApiError::storage(e));
        }
    };
    if upload.state != UploadState::Open {
        // Another completion (or an abort) got there first.
        let won = match upload.state {
            UploadState::Completed => db::video_for_upload(&mut tx, id).await?,
            _ => None,
        };
        if won.is_none_or(|(v, _)| v != video) {
            source.discard().await;
        } else {
            source.keep();
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
    if now != parts {
        source.discard().await;
        return Err(ApiError::conflict(
            "upload-changed",
            "chunks arrived while the upload was being assembled; complete it again",
        ));
    }
    let committed = match db::complete_upload(&mut tx, id, video, job, source.key(), bytes).await {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        // Nothing refers to the assembled source: remove it, the client may complete again.
        source.discard().await;
        return Err(e.into());
    }
    source.keep();
    tracing::info!(upload_id = %id, video_id = %video, job_id = %job, bytes, "upload completed");

    // The source now holds every byte; the chunk objects are no longer needed.
    let store = state.store.clone();
    tokio::spawn(async move {
        for key in parts {
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
