//! Upload sessions and their chunks: creation, caps reserved atomically, completion into a
//! video and its first job, expiry.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::{FromRow, PgConnection, Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::{
    ChunkEncodeState, JobId, JobState, Task, UploadId, UploadProtocol, UploadState, VideoId,
    VideoState, keys,
};

use super::{BindMove, move_to};

use crate::outbox;

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct UploadRow {
    pub id: Uuid,
    pub state: UploadState,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The grant token that opened the session, if an app opened it.
    pub grant_id: Option<Uuid>,
    /// `chunks` (GOP-aligned chunks) or `tus` (a whole file, in parts).
    pub protocol: UploadProtocol,
    /// A tus upload's declared length.
    pub upload_length: Option<i64>,
    /// A tus upload's `Upload-Metadata`, as sent.
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct ChunkRow {
    pub idx: i32,
    pub size_bytes: i64,
    pub sha256: String,
    #[serde(skip)]
    pub object_key: String,
    /// The chunk's video span (GOP-aligned chunks; none for tus parts).
    pub start_seconds: Option<f64>,
    pub end_seconds: Option<f64>,
}

/// A chunked upload session about to be opened.
#[derive(Clone, Debug)]
pub struct NewUpload {
    pub id: UploadId,
    pub expires_at: DateTime<Utc>,
    pub grant_id: Option<Uuid>,
    pub rotation: Option<u32>,
    pub followers: Option<u64>,
    /// Its chunks are encoded as they arrive.
    pub live_ingest: bool,
    /// Its video plays from signed URLs only.
    pub signed_playback: bool,
}

pub async fn create_upload(pool: &PgPool, new: &NewUpload) -> sqlx::Result<UploadRow> {
    let NewUpload {
        id,
        expires_at,
        grant_id,
        rotation,
        followers,
        live_ingest,
        signed_playback,
    } = new.clone();
    // A live-ingest upload reserves the ids of its video and job: its chunks' encodes write
    // straight to that job's fast-tier objects.
    let reserved = live_ingest.then(|| (VideoId::new().as_uuid(), JobId::new().as_uuid()));
    sqlx::query_as(
        "INSERT INTO uploads (id, expires_at, grant_id, rotation, video_id, job_id, followers,
                              signed_playback)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, state, created_at, expires_at, completed_at, grant_id, protocol, upload_length, metadata",
    )
    .bind(id.as_uuid())
    .bind(expires_at)
    .bind(grant_id)
    .bind(rotation.map(|r| r as i32))
    .bind(reserved.map(|r| r.0))
    .bind(reserved.map(|r| r.1))
    .bind(followers.map(|f| f.min(i64::MAX as u64) as i64))
    .bind(signed_playback)
    .fetch_one(pool)
    .await
}

/// Opens a tus upload of `length` bytes.
/// What a grant uses now: its open sessions, and the sessions it opened in the last minute with
/// the seconds until the oldest of them is a minute old.
pub async fn grant_usage(pool: &PgPool, grant: Uuid) -> sqlx::Result<(i64, i64, f64)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = $2 AND expires_at > now()),
                count(*) FILTER (WHERE created_at > now() - interval '1 minute'),
                COALESCE(EXTRACT(EPOCH FROM min(created_at) FILTER (
                    WHERE created_at > now() - interval '1 minute') + interval '1 minute' - now()),
                    0)::float8
         FROM uploads WHERE grant_id = $1",
    )
    .bind(grant)
    .bind(UploadState::Open)
    .fetch_one(pool)
    .await
}

/// A tus upload session about to be created.
#[derive(Debug)]
pub struct NewTusUpload<'a> {
    pub id: UploadId,
    pub expires_at: DateTime<Utc>,
    pub grant_id: Option<Uuid>,
    pub followers: Option<u64>,
    /// Total bytes (`Upload-Length`).
    pub length: u64,
    /// `Upload-Metadata` as sent.
    pub metadata: Option<&'a str>,
    pub signed_playback: bool,
}

pub async fn create_tus_upload(pool: &PgPool, new: &NewTusUpload<'_>) -> sqlx::Result<UploadRow> {
    sqlx::query_as(
        "INSERT INTO uploads (id, expires_at, grant_id, protocol, upload_length, metadata, followers,
                              signed_playback)
         VALUES ($1, $2, $3, $7, $4, $5, $6, $8)
         RETURNING id, state, created_at, expires_at, completed_at, grant_id, protocol, upload_length, metadata",
    )
    .bind(new.id.as_uuid())
    .bind(new.expires_at)
    .bind(new.grant_id)
    .bind(new.length as i64)
    .bind(new.metadata)
    .bind(new.followers.map(|f| f.min(i64::MAX as u64) as i64))
    .bind(UploadProtocol::Tus)
    .bind(new.signed_playback)
    .fetch_one(pool)
    .await
}

/// Parts stored so far and their total size (a tus upload's offset).
pub async fn upload_parts(pool: &PgPool, id: UploadId) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*)::bigint, COALESCE(SUM(size_bytes), 0)::bigint FROM upload_chunks
         WHERE upload_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(pool)
    .await
}

pub async fn get_upload(pool: &PgPool, id: UploadId) -> sqlx::Result<Option<UploadRow>> {
    sqlx::query_as(
        "SELECT id, state, created_at, expires_at, completed_at, grant_id, protocol, upload_length, metadata FROM uploads WHERE id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

pub async fn list_chunks(conn: &mut PgConnection, id: UploadId) -> sqlx::Result<Vec<ChunkRow>> {
    sqlx::query_as(
        "SELECT idx, size_bytes, sha256, object_key, start_seconds, end_seconds FROM upload_chunks
         WHERE upload_id = $1 ORDER BY idx",
    )
    .bind(id.as_uuid())
    .fetch_all(conn)
    .await
}

pub async fn get_chunk<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: UploadId,
    idx: u32,
) -> sqlx::Result<Option<ChunkRow>> {
    sqlx::query_as(
        "SELECT idx, size_bytes, sha256, object_key, start_seconds, end_seconds FROM upload_chunks
         WHERE upload_id = $1 AND idx = $2",
    )
    .bind(id.as_uuid())
    .bind(idx as i32)
    .fetch_optional(db)
    .await
}

/// Bytes stored so far for an upload.
pub async fn upload_bytes(pool: &PgPool, id: UploadId) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(size_bytes), 0)::bigint FROM upload_chunks WHERE upload_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(pool)
    .await
}

/// Seconds of video stored so far for an upload (from the checked chunks).
pub async fn upload_seconds(pool: &PgPool, id: UploadId) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(end_seconds - start_seconds), 0)::float8 FROM upload_chunks
         WHERE upload_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(pool)
    .await
}

/// What a chunk's media holds, as checked on arrival.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkMedia {
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub frames: i32,
}

pub enum ChunkInsert {
    Stored,
    /// The index was already stored; here is what it holds.
    Existing(ChunkRow),
    /// Recording it would take the upload past its byte cap (chunks stored in parallel).
    OverBytes,
    /// Recording it would take the upload past its duration cap.
    OverSeconds,
}

/// What an upload may hold in all.
#[derive(Clone, Copy, Debug)]
pub struct UploadCaps {
    pub max_bytes: u64,
    pub max_seconds: f64,
    /// Seconds of video a live-ingest session encodes before it completes; chunks past it wait
    /// (`deferred`) until completion.
    pub encode_ahead_seconds: f64,
}

/// Records a chunk unless its index is already taken (first writer wins), only while the upload
/// is open, and only within the upload's caps: the check and the insert happen under the upload
/// row's lock, so chunks stored in parallel cannot together pass a cap.
#[allow(clippy::too_many_arguments)]
pub async fn insert_chunk(
    pool: &PgPool,
    id: UploadId,
    idx: u32,
    size_bytes: u64,
    sha256: &str,
    object_key: &str,
    media: Option<&ChunkMedia>,
    caps: UploadCaps,
) -> sqlx::Result<Option<ChunkInsert>> {
    let mut tx = pool.begin().await?;
    let open: Option<(UploadState, Option<Uuid>)> =
        sqlx::query_as("SELECT state, job_id FROM uploads WHERE id = $1 FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let Some((state, reserved_job)) = open else {
        return Ok(None);
    };
    if state != UploadState::Open {
        return Ok(None);
    }
    // First writer wins: the upload row's lock orders writers, so a stored index is seen here.
    if let Some(row) = get_chunk(&mut *tx, id, idx).await? {
        return Ok(Some(ChunkInsert::Existing(row)));
    }
    let (bytes, seconds): (i64, f64) = sqlx::query_as(
        "SELECT COALESCE(sum(size_bytes), 0)::bigint,
                COALESCE(sum(end_seconds - start_seconds), 0)::float8
         FROM upload_chunks WHERE upload_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    if bytes.max(0) as u64 + size_bytes > caps.max_bytes {
        return Ok(Some(ChunkInsert::OverBytes));
    }
    if let Some(m) = media
        && seconds + (m.end_seconds - m.start_seconds) > caps.max_seconds
    {
        return Ok(Some(ChunkInsert::OverSeconds));
    }
    // A media chunk of a live-ingest upload is encoded as soon as it is stored, within the
    // session's budget; past it, when the upload completes.
    let encode = reserved_job.is_some() && media.is_some();
    let (ahead,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(sum(end_seconds - start_seconds), 0)::float8 FROM upload_chunks
         WHERE upload_id = $1 AND encode_state <> $2",
    )
    .bind(id.as_uuid())
    .bind(ChunkEncodeState::Deferred)
    .fetch_one(&mut *tx)
    .await?;
    let defer = encode
        && media
            .is_some_and(|m| ahead + (m.end_seconds - m.start_seconds) > caps.encode_ahead_seconds);
    let encode_state = match (encode, defer) {
        (_, true) => Some(ChunkEncodeState::Deferred),
        (true, false) => Some(ChunkEncodeState::Queued),
        (false, false) => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO upload_chunks
             (upload_id, idx, size_bytes, sha256, object_key, start_seconds, end_seconds, frames,
              encode_state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (upload_id, idx) DO NOTHING",
    )
    .bind(id.as_uuid())
    .bind(idx as i32)
    .bind(size_bytes as i64)
    .bind(sha256)
    .bind(object_key)
    .bind(media.map(|m| m.start_seconds))
    .bind(media.map(|m| m.end_seconds))
    .bind(media.map(|m| m.frames))
    .bind(encode_state)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let result = if inserted == 1 {
        if encode && !defer {
            outbox::enqueue(
                &mut tx,
                &Task::EncodeChunk {
                    upload_id: id,
                    index: idx,
                },
            )
            .await?;
        }
        ChunkInsert::Stored
    } else {
        // Unreachable under the lock; answered as a taken index all the same.
        match get_chunk(&mut *tx, id, idx).await? {
            Some(row) => ChunkInsert::Existing(row),
            None => return Ok(None),
        }
    };
    tx.commit().await?;
    Ok(Some(result))
}

/// Ends an open upload as `to` (aborted or expired) and schedules its chunk objects for
/// deletion, in one transaction. False when it was not open.
pub async fn end_upload(pool: &PgPool, id: UploadId, to: UploadState) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let ended: Option<(Option<Uuid>,)> = sqlx::query_as(
        "UPDATE uploads SET state = $2 WHERE id = $1 AND state = ANY($3) RETURNING video_id",
    )
    .bind(id.as_uuid())
    .bind_move(move_to(to))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((video,)) = ended else {
        return Ok(false);
    };
    if to == UploadState::Expired {
        let event = vtx_domain::webhooks::EventType::UploadExpired;
        let video = video.map(VideoId::from_uuid);
        super::webhooks::record_event(&mut tx, event, video, Some(id)).await?;
    }
    // The chunks, and what their encodes wrote for the video the upload reserved.
    let prefixes = std::iter::once(keys::upload(id))
        .chain(video.map(|v| keys::video(VideoId::from_uuid(v))))
        .collect::<Vec<_>>();
    sqlx::query("INSERT INTO garbage (prefix, delete_after) SELECT unnest($1::text[]), now()")
        .bind(prefixes)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Expires open uploads past their expiry (at most `limit`); returns how many.
pub async fn expire_uploads(pool: &PgPool, limit: i64) -> sqlx::Result<usize> {
    let due: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM uploads WHERE state = $2 AND expires_at < now() LIMIT $1")
            .bind(limit)
            .bind(UploadState::Open)
            .fetch_all(pool)
            .await?;
    let mut n = 0;
    for (id,) in due {
        n += usize::from(end_upload(pool, UploadId::from_uuid(id), UploadState::Expired).await?);
    }
    Ok(n)
}

/// Locks an upload row for the rest of the transaction (completion runs once at a time).
pub async fn lock_upload(
    tx: &mut Transaction<'static, Postgres>,
    id: UploadId,
) -> sqlx::Result<Option<UploadRow>> {
    sqlx::query_as(
        "SELECT id, state, created_at, expires_at, completed_at, grant_id, protocol, upload_length, metadata FROM uploads WHERE id = $1 FOR UPDATE",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut **tx)
    .await
}

pub async fn video_for_upload(
    conn: &mut PgConnection,
    id: UploadId,
) -> sqlx::Result<Option<(VideoId, JobId)>> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT v.id, j.id FROM videos v JOIN jobs j ON j.video_id = v.id
         WHERE v.upload_id = $1 ORDER BY j.created_at LIMIT 1",
    )
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(v, j)| (VideoId::from_uuid(v), JobId::from_uuid(j))))
}

/// In one transaction: the upload completes, its video and first job exist, and the job's
/// announcement waits in the outbox.
pub async fn complete_upload(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
    video: VideoId,
    job: JobId,
    source_key: &str,
    source_bytes: u64,
) -> sqlx::Result<()> {
    create_video_and_job(tx, upload, video, job, source_key, source_bytes, false).await?;
    outbox::enqueue(tx, &Task::JobCreated { job_id: job }).await
}

/// Inside a completion: the upload is completed, and its video (processing) and first job
/// (queued; `live_ingest` when its fast tier comes from the upload's chunks) exist.
pub(crate) async fn create_video_and_job(
    tx: &mut Transaction<'static, Postgres>,
    upload: UploadId,
    video: VideoId,
    job: JobId,
    source_key: &str,
    source_bytes: u64,
    live_ingest: bool,
) -> sqlx::Result<()> {
    let completed = sqlx::query(
        "UPDATE uploads SET state = $2, completed_at = now() WHERE id = $1 AND state = ANY($3)",
    )
    .bind(upload.as_uuid())
    .bind_move(move_to(UploadState::Completed))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if completed != 1 {
        // Callers hold the upload's lock and saw it open: this is a bug, not a race.
        return Err(sqlx::Error::RowNotFound);
    }
    sqlx::query(
        "INSERT INTO videos (id, upload_id, state, source_key, source_bytes, signed_playback)
         SELECT $1, $2, $3, $4, $5, signed_playback FROM uploads WHERE id = $2",
    )
    .bind(video.as_uuid())
    .bind(upload.as_uuid())
    .bind(VideoState::Processing)
    .bind(source_key)
    .bind(source_bytes as i64)
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO jobs (id, video_id, state, live_ingest) VALUES ($1, $2, $3, $4)")
        .bind(job.as_uuid())
        .bind(video.as_uuid())
        .bind(JobState::Queued)
        .bind(live_ingest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
