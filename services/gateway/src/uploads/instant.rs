//! Instant publish of standard inputs (`VTX_INSTANT_PUBLISH`). Each chunk of a live-ingest
//! upload that is a standard input (H.264 with closed GOPs, AAC, within `InstantPolicy`) is
//! remuxed as it is checked, in the same child process, into the instant tier's HLS layout
//! (one rendition, `source`, the upload's own bytes in CMAF segments), and stored. Completing
//! an upload whose every chunk was remuxed then writes two playlists and puts the tier live in
//! the completing transaction: the video plays within milliseconds of the last byte, whatever
//! its length. The fast ladder (encoded from the chunks as usual) replaces it through the same
//! swap as any tier, then the high tier replaces that.

use std::path::Path;

use sqlx::{Postgres, Transaction};
use vtx_domain::live_ingest::{ChunkEncode, package_chunks};
use vtx_domain::{ChunkIndex, JobId, Tier, UploadId, VideoId, keys};
use vtx_infra::db::{self, NewRendition, TierOutput, VideoFacts};
use vtx_infra::storage::content_type;
use vtx_media::{SOURCE_RENDITION, chunk_hls_dir};

use crate::inspect::Instant;
use crate::{ApiResult, AppState};

/// The job and video whose instant tier a chunk's remux goes to.
pub(super) struct Target {
    video: VideoId,
    job: JobId,
}

/// Where an upload's chunks are remuxed to, when instant publish is on and the upload can use
/// it (live ingest, no declared rotation).
pub(super) async fn target(state: &AppState, upload: UploadId) -> ApiResult<Option<Target>> {
    if state.instant.is_none() {
        return Ok(None);
    }
    Ok(db::instant_target(&state.pool, upload)
        .await?
        .map(|(video, job)| Target { video, job }))
}

/// Stores what the check remuxed (and chunk 0's cover) into the instant tier. `None` when the
/// chunk is not a standard input or its files could not be stored: then the upload is not
/// published early, and nothing else changes.
pub(super) async fn store_remux(
    state: &AppState,
    target: &Target,
    upload: UploadId,
    index: ChunkIndex,
    outcome: Instant,
    dir: &Path,
) -> Option<ChunkEncode> {
    let encoded = match outcome {
        Instant::Remuxed(encoded) => encoded,
        Instant::NotStandard(why) => {
            tracing::info!(upload_id = %upload, index = index.get(), why, "not a standard input: no instant publish");
            metrics::counter!("vtx_instant_not_standard_total").increment(1);
            return None;
        }
    };
    let dest = keys::chunk_hls(
        target.video,
        target.job,
        Tier::Instant,
        SOURCE_RENDITION,
        index.get(),
    );
    let mut stored = state
        .store
        .put_tree(&chunk_hls_dir(dir, SOURCE_RENDITION), &dest)
        .await;
    if stored.is_ok() && index.get() == 0 {
        stored = state
            .store
            .put_file(
                &cover_key(target.video, target.job),
                &dir.join("cover.jpg"),
                "image/jpeg",
            )
            .await;
    }
    match stored {
        Ok(()) => Some(encoded),
        Err(e) => {
            tracing::warn!(upload_id = %upload, index = index.get(), error = %e, "could not store a remuxed chunk: no instant publish");
            None
        }
    }
}

fn cover_key(video: VideoId, job: JobId) -> String {
    format!("{}cover.jpg", keys::tier_output(video, job, Tier::Instant))
}

/// Inside the completing transaction of a live-ingest upload: when every chunk was remuxed,
/// writes the instant tier's playlists and puts it live. False when the upload does not
/// qualify (or its chunks do not make one stream: then the fast tier publishes as before).
pub(super) async fn publish(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
    video: VideoId,
    job: JobId,
) -> ApiResult<bool> {
    if state.instant.is_none() {
        return Ok(false);
    }
    let Some(chunks) = db::instant_chunks(tx, upload).await? else {
        return Ok(false);
    };
    let packaged = match package_chunks(&chunks) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(upload_id = %upload, error = %e, "the remuxed chunks do not make one stream: no instant publish");
            return Ok(false);
        }
    };
    let dest = keys::tier_output(video, job, Tier::Instant);
    let mut renditions = Vec::new();
    for r in &packaged.renditions {
        let rendition = NewRendition::hls(&dest, r);
        state
            .store
            .put_bytes(
                &rendition.object_key,
                r.playlist.clone().into_bytes(),
                content_type("index.m3u8"),
            )
            .await
            .map_err(crate::ApiError::storage)?;
        renditions.push(rendition);
    }
    let master = format!("{dest}hls/master.m3u8");
    state
        .store
        .put_bytes(
            &master,
            packaged.master.into_bytes(),
            content_type("master.m3u8"),
        )
        .await
        .map_err(crate::ApiError::storage)?;
    let output = TierOutput {
        renditions,
        hls_master_key: Some(master),
        cover_key: Some(cover_key(video, job)),
    };
    let facts = VideoFacts {
        width: packaged.width,
        height: packaged.height,
        frames: packaged.frames,
        duration_ms: (packaged.seconds * 1000.0).round() as u64,
    };
    db::publish_instant(tx, video, job, &output, &facts, state.swap_grace).await?;
    metrics::counter!("vtx_instant_published_total").increment(1);
    Ok(true)
}
