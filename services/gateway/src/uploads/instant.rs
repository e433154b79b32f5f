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

/// For a chunk just recorded: stores what its check remuxed (and chunk 0's cover) into the
/// instant tier and records it with the chunk. A chunk that is not a standard input, or whose
/// files cannot be stored, is recorded as such: then the upload is not published early, and
/// nothing else changes.
pub(super) async fn store_remux(
    state: &AppState,
    target: &Target,
    upload: UploadId,
    index: ChunkIndex,
    outcome: Instant,
    dir: &Path,
) {
    let encoded = stored(state, target, upload, index, outcome, dir).await;
    if let Err(e) = db::set_chunk_instant(&state.pool, upload, index.get(), encoded.as_ref()).await
    {
        // Left unrecorded, the chunk rules the instant tier out at completion.
        tracing::warn!(upload_id = %upload, index = index.get(), error = %e, "could not record a chunk's remux");
    }
}

async fn stored(
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
    // The names go into playlists: only what FFmpeg's HLS muxer writes is accepted.
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !encoded
        .renditions
        .iter()
        .all(|r| plain(&r.name) && plain(&r.init) && r.segments.iter().all(|s| plain(&s.uri)))
    {
        tracing::warn!(upload_id = %upload, index = index.get(), "a remux named files oddly: no instant publish");
        return None;
    }
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
    let published = match db::instant_chunks(tx, upload).await? {
        Some(chunks) => go_live(state, tx, &chunks, video, job).await?,
        None => false,
    };
    if !published {
        // Whatever chunks were remuxed will not be played.
        db::forget_instant(tx, video, job).await?;
    }
    Ok(published)
}

async fn go_live(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    chunks: &[(u32, ChunkEncode)],
    video: VideoId,
    job: JobId,
) -> ApiResult<bool> {
    let packaged = match package_chunks(chunks) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%video, error = %e, "the remuxed chunks do not make one stream: no instant publish");
            return Ok(false);
        }
    };
    let dest = keys::tier_output(video, job, Tier::Instant);
    let mut renditions = Vec::new();
    for r in &packaged.renditions {
        renditions.push(NewRendition::hls(&dest, r));
    }
    let master = format!("{dest}hls/master.m3u8");
    let mut files: Vec<(&str, Vec<u8>)> = renditions
        .iter()
        .zip(&packaged.renditions)
        .map(|(n, r)| (n.object_key.as_str(), r.playlist.clone().into_bytes()))
        .collect();
    files.push((&master, packaged.master.clone().into_bytes()));
    for (key, bytes) in files {
        // Best effort: without its playlists the upload completes as without instant publish.
        if let Err(e) = state.store.put_bytes(key, bytes, content_type(key)).await {
            tracing::warn!(%video, error = %e, "could not store the instant tier's playlists");
            return Ok(false);
        }
    }
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
