//! Transcoding while the upload arrives. A chunked upload of media chunks reserves its video and
//! job ids at creation; each stored chunk queues its own fast-tier encode (in the transaction
//! that stores it), tracked on the chunk row like a slice (state, lease, attempts). Completing
//! the upload creates the job's fast tier already counting the chunks encoded so far; whichever
//! of the completion and the last chunk encode comes second queues the tier's publication,
//! exactly once: both take the upload row's lock first, so neither misses the other.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::live_ingest::ChunkEncode;
use vtx_domain::{
    ChunkEncodeState, Container, ErrorCode, JobId, JobState, Lifecycle, Task, Tier, TierState,
    UploadId, UploadState, VideoId,
};

use super::tiers::{
    NewRendition, TierOutput, VideoFacts, finish_merging_tier, go_live, insert_renditions,
    succeed_job,
};
use super::{BindMove, move_to};
use crate::outbox;

/// What a worker needs to encode a chunk.
#[derive(Clone, Debug)]
pub struct ChunkWork {
    pub object_key: String,
    pub video: VideoId,
    pub job: JobId,
    pub rotation: u32,
    /// Claims so far, this one included.
    pub attempts: u32,
}

type ChunkWorkRow = (String, i32, Uuid, Uuid, Option<i32>);

/// Takes a chunk's encode for `owner` with a lease: when it is queued, running under an expired
/// lease, or already `owner`'s. `None` when it is done or failed, held by a live lease, or its
/// upload ended without it (aborted, expired, or completed the ordinary way).
pub async fn claim_chunk_encode(
    pool: &PgPool,
    upload: UploadId,
    index: u32,
    owner: &str,
    lease: Duration,
) -> sqlx::Result<Option<ChunkWork>> {
    let row: Option<ChunkWorkRow> = sqlx::query_as(
        "UPDATE upload_chunks c SET encode_state = $5, encode_owner = $3,
                encode_lease_until = now() + make_interval(secs => $4),
                encode_attempts = c.encode_attempts + 1
         FROM uploads u
         WHERE c.upload_id = $1 AND c.idx = $2 AND u.id = c.upload_id
           AND u.job_id IS NOT NULL AND u.state = ANY($8)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id
                           AND (NOT j.live_ingest OR j.state = ANY($9)))
           AND c.encode_state = ANY($6)
           AND (c.encode_state = $7 OR c.encode_lease_until < now() OR c.encode_owner = $3)
         RETURNING c.object_key, c.encode_attempts, u.video_id, u.job_id, u.rotation",
    )
    .bind(upload.as_uuid())
    .bind(index as i32)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind_move(move_to(ChunkEncodeState::Running))
    .bind(ChunkEncodeState::Queued)
    // An upload still arriving, or completed by live ingest (an aborted or expired one is not).
    .bind(vec![UploadState::Open, UploadState::Completed])
    .bind(JobState::terminal())
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(object_key, attempts, video, job, rotation)| ChunkWork {
            object_key,
            video: VideoId::from_uuid(video),
            job: JobId::from_uuid(job),
            rotation: rotation.unwrap_or(0).max(0) as u32,
            attempts: attempts.max(0) as u32,
        }),
    )
}

/// Renews a chunk encode's lease; false when `owner` no longer holds it.
pub async fn heartbeat_chunk_encode(
    pool: &PgPool,
    upload: UploadId,
    index: u32,
    owner: &str,
    lease: Duration,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE upload_chunks SET encode_lease_until = now() + make_interval(secs => $4)
         WHERE upload_id = $1 AND idx = $2 AND encode_state = $5 AND encode_owner = $3",
    )
    .bind(upload.as_uuid())
    .bind(index as i32)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(ChunkEncodeState::Running)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records a chunk's encode. If the upload has completed and this was the last chunk its fast
/// tier waited for, the tier's publication is queued in the same transaction. False (nothing
/// changed) when `owner` had lost the chunk.
pub async fn finish_chunk_encode(
    pool: &PgPool,
    upload: UploadId,
    index: u32,
    owner: &str,
    encoded: &ChunkEncode,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let job: Option<(Option<Uuid>,)> =
        sqlx::query_as("SELECT job_id FROM uploads WHERE id = $1 FOR SHARE")
            .bind(upload.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let n = sqlx::query(
        // The owner stays, as who encoded it.
        "UPDATE upload_chunks SET encode_state = $5, encoded = $4, encode_lease_until = NULL
         WHERE upload_id = $1 AND idx = $2 AND encode_state = ANY($6) AND encode_owner = $3",
    )
    .bind(upload.as_uuid())
    .bind(index as i32)
    .bind(owner)
    .bind(Json(encoded))
    .bind_move(move_to(ChunkEncodeState::Done))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    if let Some((Some(job),)) = job {
        count_encoded_chunks(&mut tx, upload, JobId::from_uuid(job)).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A chunk's encode failed for good (`code`). Before completion this only marks the chunk: the
/// upload then completes the ordinary way. After a live-ingest completion it fails the fast tier.
pub async fn fail_chunk_encode(
    pool: &PgPool,
    upload: UploadId,
    index: u32,
    code: ErrorCode,
    message: &str,
) -> sqlx::Result<Option<JobId>> {
    let mut tx = pool.begin().await?;
    let job: Option<(Option<Uuid>, bool)> = sqlx::query_as(
        "SELECT u.job_id, COALESCE(j.live_ingest, false) FROM uploads u
         LEFT JOIN jobs j ON j.id = u.job_id WHERE u.id = $1 FOR SHARE OF u",
    )
    .bind(upload.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE upload_chunks SET encode_state = $4, encode_error = $3, encode_owner = NULL,
                encode_lease_until = NULL
         WHERE upload_id = $1 AND idx = $2 AND encode_state = ANY($5)",
    )
    .bind(upload.as_uuid())
    .bind(index as i32)
    .bind(format!("{code}: {message}"))
    .bind_move(move_to(ChunkEncodeState::Failed))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match job {
        Some((Some(job), true)) => Some(JobId::from_uuid(job)),
        _ => None,
    })
}

/// Under the fast tier's lock: counts the upload's encoded chunks into the tier and, when all
/// are, moves it to merging and queues its publication.
async fn count_encoded_chunks(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
    job: JobId,
) -> sqlx::Result<()> {
    let tier: Option<(i32,)> = sqlx::query_as(
        "SELECT t.slices_total FROM job_tiers t JOIN jobs j ON j.id = t.job_id
         WHERE t.job_id = $1 AND t.tier = $2 AND t.state = $3 AND j.live_ingest
         FOR UPDATE OF t",
    )
    .bind(job.as_uuid())
    .bind(Tier::Fast)
    .bind(TierState::Encoding)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((total,)) = tier else {
        return Ok(());
    };
    let (done,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM upload_chunks WHERE upload_id = $1 AND encode_state = $2",
    )
    .bind(upload.as_uuid())
    .bind(ChunkEncodeState::Done)
    .fetch_one(&mut **tx)
    .await?;
    let done = (done as i32).min(total);
    let all = done == total;
    sqlx::query(
        "UPDATE job_tiers SET slices_done = $2,
                concealed_video_frames = (
                    SELECT COALESCE(sum((encoded->>'concealed_video_frames')::bigint), 0)
                    FROM upload_chunks WHERE upload_id = $4 AND encode_state = $5),
                state = CASE WHEN $3 AND state = ANY($8) THEN $7 ELSE state END,
                encoded_at = CASE WHEN $3 THEN now() ELSE encoded_at END,
                merge_queued = merge_queued OR $3
         WHERE job_id = $1 AND tier = $6",
    )
    .bind(job.as_uuid())
    .bind(done)
    .bind(all)
    .bind(upload.as_uuid())
    .bind(ChunkEncodeState::Done)
    .bind(Tier::Fast)
    .bind_move(move_to(TierState::Merging))
    .execute(&mut **tx)
    .await?;
    if all {
        outbox::enqueue(
            tx,
            &Task::Merge {
                job_id: job,
                tier: Tier::Fast,
            },
        )
        .await?;
    }
    Ok(())
}

/// Whether an upload can complete by live ingest: it reserved a job and no chunk's encode failed.
pub async fn live_ingest_ids(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
) -> sqlx::Result<Option<(VideoId, JobId, bool)>> {
    let row: Option<(Option<Uuid>, Option<Uuid>, bool)> = sqlx::query_as(
        "SELECT u.video_id, u.job_id,
                NOT EXISTS (SELECT 1 FROM upload_chunks c WHERE c.upload_id = u.id
                            AND (c.encode_state IS NULL OR c.encode_state = $2))
         FROM uploads u WHERE u.id = $1",
    )
    .bind(upload.as_uuid())
    .bind(ChunkEncodeState::Failed)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some((Some(v), Some(j), ok)) => Some((VideoId::from_uuid(v), JobId::from_uuid(j), ok)),
        _ => None,
    })
}

/// Completes an upload whose chunks are being (or have been) encoded as they arrived: the
/// upload, its video and its live-ingest job with a fast tier over `chunks` chunks. The source
/// is not assembled here (the scheduler does it for the later tiers), so completing costs the
/// same for a long video as for a short one.
pub async fn complete_live_ingest_upload(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
    video: VideoId,
    job: JobId,
    source_key: &str,
    source_bytes: u64,
    chunks: u32,
) -> sqlx::Result<()> {
    super::create_video_and_job(tx, upload, video, job, source_key, source_bytes, true).await?;
    sqlx::query(
        "INSERT INTO job_tiers (job_id, tier, state, slices_total, started_at)
         SELECT $1, $4, $5, $2, min(created_at) FROM upload_chunks WHERE upload_id = $3",
    )
    .bind(job.as_uuid())
    .bind(chunks as i32)
    .bind(upload.as_uuid())
    .bind(Tier::Fast)
    // Its chunks are already encoding: the tier starts there, not waiting.
    .bind(TierState::Encoding)
    .execute(&mut **tx)
    .await?;
    // Chunks past the session's encode-ahead budget are encoded now.
    let deferred: Vec<(i32,)> = sqlx::query_as(
        "UPDATE upload_chunks SET encode_state = $2
         WHERE upload_id = $1 AND encode_state = ANY($3) AND encode_state = $4 RETURNING idx",
    )
    .bind(upload.as_uuid())
    .bind_move(move_to(ChunkEncodeState::Queued))
    .bind(ChunkEncodeState::Deferred)
    .fetch_all(&mut **tx)
    .await?;
    for (idx,) in deferred {
        outbox::enqueue(
            tx,
            &Task::EncodeChunk {
                upload_id: upload,
                index: idx.max(0) as u32,
            },
        )
        .await?;
    }
    count_encoded_chunks(tx, upload, job).await
}

/// A live-ingest fast tier ready to publish: its chunks' encodes in order.
pub struct LiveIngestMerge {
    pub video: VideoId,
    pub upload: UploadId,
    pub chunks: Vec<(u32, ChunkEncode)>,
    pub attempts: u32,
}

/// Claims the publication of a live-ingest job's fast tier (counting an attempt); `None` unless
/// the job is live ingest and its fast tier waits for it.
pub async fn claim_live_ingest_merge(
    pool: &PgPool,
    job: JobId,
) -> sqlx::Result<Option<LiveIngestMerge>> {
    let row: Option<(Uuid, Uuid, i32)> = sqlx::query_as(
        "UPDATE job_tiers t SET merge_attempts = t.merge_attempts + 1
         FROM jobs j JOIN videos v ON v.id = j.video_id
         WHERE j.id = t.job_id AND t.job_id = $1 AND t.tier = $2 AND t.state = $3
           AND j.live_ingest AND NOT j.state = ANY($4)
         RETURNING j.video_id, v.upload_id, t.merge_attempts",
    )
    .bind(job.as_uuid())
    .bind(Tier::Fast)
    .bind(TierState::Merging)
    .bind(JobState::terminal())
    .fetch_optional(pool)
    .await?;
    let Some((video, upload, attempts)) = row else {
        return Ok(None);
    };
    let rows: Vec<(i32, Option<Json<ChunkEncode>>)> =
        sqlx::query_as("SELECT idx, encoded FROM upload_chunks WHERE upload_id = $1 ORDER BY idx")
            .bind(upload)
            .fetch_all(pool)
            .await?;
    Ok(Some(LiveIngestMerge {
        video: VideoId::from_uuid(video),
        upload: UploadId::from_uuid(upload),
        chunks: rows
            .into_iter()
            .filter_map(|(i, e)| e.map(|Json(e)| (i as u32, e)))
            .collect(),
        attempts: attempts.max(0) as u32,
    }))
}

/// Whether a job's fast tier is made of its upload's chunks.
pub async fn is_live_ingest(pool: &PgPool, job: JobId) -> sqlx::Result<bool> {
    let row: Option<(bool,)> = sqlx::query_as("SELECT live_ingest FROM jobs WHERE id = $1")
        .bind(job.as_uuid())
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some_and(|(p,)| p))
}

/// Puts a live-ingest fast tier live. With later tiers to run, the job goes to the scheduler
/// (which assembles the source and plans them); without, it is done.
pub async fn publish_live_ingest(
    pool: &PgPool,
    job: JobId,
    video: VideoId,
    output: &TierOutput,
    facts: &VideoFacts,
    later_tiers: bool,
    grace: Duration,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    if !finish_merging_tier(&mut tx, job, Tier::Fast).await? {
        return Ok(false);
    }
    go_live(&mut tx, video, job, Tier::Fast, output, Some(facts), grace).await?;
    outbox::enqueue(&mut tx, &Task::MuxChunks { job_id: job }).await?;
    if later_tiers {
        outbox::enqueue(&mut tx, &Task::JobCreated { job_id: job }).await?;
    } else {
        succeed_job(&mut tx, job).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The job and video an upload reserved, when its chunks can be remuxed into an instant tier:
/// an open live-ingest upload whose declared rotation is none (HLS players ignore a rotation)
/// and none of whose stored chunks was found not standard (one such chunk rules the tier out).
pub async fn instant_target(
    pool: &PgPool,
    upload: UploadId,
) -> sqlx::Result<Option<(VideoId, JobId)>> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT u.video_id, u.job_id FROM uploads u
         WHERE u.id = $1 AND u.video_id IS NOT NULL AND u.job_id IS NOT NULL
           AND u.state = $2 AND COALESCE(u.rotation, 0) % 360 = 0
           AND NOT EXISTS (SELECT 1 FROM upload_chunks c
                           WHERE c.upload_id = u.id AND c.instant = 'false'::jsonb)",
    )
    .bind(upload.as_uuid())
    .bind(UploadState::Open)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(v, j)| (VideoId::from_uuid(v), JobId::from_uuid(j))))
}

/// Records what a stored chunk was remuxed into (its files are in the instant tier's objects),
/// or (`None`) that it was not: `false`, which rules the upload's instant tier out.
pub async fn set_chunk_instant(
    pool: &PgPool,
    upload: UploadId,
    index: u32,
    encoded: Option<&ChunkEncode>,
) -> sqlx::Result<()> {
    let value = match encoded {
        Some(e) => serde_json::to_value(e).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
        None => serde_json::Value::Bool(false),
    };
    sqlx::query("UPDATE upload_chunks SET instant = $3 WHERE upload_id = $1 AND idx = $2")
        .bind(upload.as_uuid())
        .bind(index as i32)
        .bind(Json(value))
        .execute(pool)
        .await?;
    Ok(())
}

/// Inside a completing transaction: the instant tier's objects of a video that is not published
/// early (its chunks did not all qualify) are deleted.
pub async fn forget_instant(
    tx: &mut Transaction<'static, Postgres>,
    video: VideoId,
    job: JobId,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
        .bind(vtx_domain::keys::tier_output(video, job, Tier::Instant))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What an upload's chunks were remuxed into, in order, when every chunk was a standard
/// input, and the fast tier's encodes are not all done already (they would replace the instant
/// tier at once); `None` otherwise.
pub async fn instant_chunks(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
) -> sqlx::Result<Option<Vec<(u32, ChunkEncode)>>> {
    let rows: Vec<(
        i32,
        Option<Json<serde_json::Value>>,
        Option<ChunkEncodeState>,
    )> = sqlx::query_as(
        "SELECT idx, instant, encode_state FROM upload_chunks WHERE upload_id = $1 ORDER BY idx",
    )
    .bind(upload.as_uuid())
    .fetch_all(&mut **tx)
    .await?;
    if rows
        .iter()
        .all(|(_, _, s)| *s == Some(ChunkEncodeState::Done))
    {
        return Ok(None);
    }
    // A chunk not remuxed (`false`) or whose remux is still being stored (NULL) rules it out.
    Ok(rows
        .into_iter()
        .map(|(i, e, _)| {
            let Json(value) = e?;
            let encoded: ChunkEncode = serde_json::from_value(value).ok()?;
            Some((i.max(0) as u32, encoded))
        })
        .collect())
}

/// Inside the completing transaction: puts an upload's instant tier live (the video is
/// published) and queues its MP4's mux. The fast tier replaces it when its merge is done.
pub async fn publish_instant(
    tx: &mut Transaction<'static, Postgres>,
    video: VideoId,
    job: JobId,
    output: &TierOutput,
    facts: &VideoFacts,
    grace: Duration,
) -> sqlx::Result<()> {
    go_live(tx, video, job, Tier::Instant, output, Some(facts), grace).await?;
    outbox::enqueue(tx, &Task::MuxChunks { job_id: job }).await
}

/// The chunk objects of a live-ingest job's upload, in order (the scheduler assembles the source
/// from them); `None` for a job whose source was assembled at completion.
pub async fn live_ingest_chunk_keys(
    pool: &PgPool,
    job: JobId,
) -> sqlx::Result<Option<(UploadId, Vec<String>)>> {
    let upload: Option<(Uuid,)> = sqlx::query_as(
        "SELECT v.upload_id FROM jobs j JOIN videos v ON v.id = j.video_id
         WHERE j.id = $1 AND j.live_ingest AND v.upload_id IS NOT NULL",
    )
    .bind(job.as_uuid())
    .fetch_optional(pool)
    .await?;
    let Some((upload,)) = upload else {
        return Ok(None);
    };
    let keys: Vec<(String,)> =
        sqlx::query_as("SELECT object_key FROM upload_chunks WHERE upload_id = $1 ORDER BY idx")
            .bind(upload)
            .fetch_all(pool)
            .await?;
    Ok(Some((
        UploadId::from_uuid(upload),
        keys.into_iter().map(|(k,)| k).collect(),
    )))
}

/// The chunks' objects are no longer needed (the source holds their bytes).
pub async fn forget_chunks(pool: &PgPool, upload: UploadId) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
        .bind(vtx_domain::keys::upload(upload))
        .execute(pool)
        .await?;
    Ok(())
}

/// A rendition of a live-ingest fast tier (or of a live instant tier) that has no MP4 yet.
pub struct HlsOnly {
    pub tier: Tier,
    pub name: String,
    pub codec: String,
    pub playlist_key: String,
    pub width: u32,
    pub height: u32,
}

/// A live-ingest job's HLS renditions that have no MP4 yet: its fast tier's, and its instant tier's while live.
pub async fn renditions_without_mp4(
    pool: &PgPool,
    job: JobId,
) -> sqlx::Result<Option<(VideoId, Vec<HlsOnly>)>> {
    let rows: Vec<(Uuid, Tier, String, String, String, i32, i32)> = sqlx::query_as(
        "SELECT h.video_id, h.tier, h.name, h.codec, h.object_key, h.width, h.height
         FROM renditions h
         JOIN jobs j ON j.id = h.job_id AND j.live_ingest
         JOIN videos v ON v.id = h.video_id
         WHERE h.job_id = $1 AND h.container = $3
           AND (h.tier = $2 OR (h.tier = $5 AND v.live_tier = $5))
           AND NOT EXISTS (SELECT 1 FROM renditions m WHERE m.video_id = h.video_id
                           AND m.job_id = h.job_id AND m.tier = h.tier AND m.name = h.name
                           AND m.container = $4)
         ORDER BY h.height",
    )
    .bind(job.as_uuid())
    .bind(Tier::Fast)
    .bind(Container::Hls)
    .bind(Container::Mp4)
    .bind(Tier::Instant)
    .fetch_all(pool)
    .await?;
    let Some(video) = rows.first().map(|r| VideoId::from_uuid(r.0)) else {
        return Ok(None);
    };
    Ok(Some((
        video,
        rows.into_iter()
            .map(|(_, tier, name, codec, playlist_key, w, h)| HlsOnly {
                tier,
                name,
                codec,
                playlist_key,
                width: w.max(0) as u32,
                height: h.max(0) as u32,
            })
            .collect(),
    )))
}

/// Adds MP4 renditions to a tier already live.
pub async fn add_renditions(
    pool: &PgPool,
    video: VideoId,
    job: JobId,
    tier: Tier,
    renditions: &[NewRendition],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    insert_renditions(&mut tx, video, job, tier, renditions).await?;
    tx.commit().await
}
