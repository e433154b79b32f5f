//! Jobs and videos as the status API reads them, and failing a job.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use sqlx::postgres::PgPool;
use uuid::Uuid;
use vtx_domain::{ErrorCode, JobId, JobState, VideoId, VideoState};

use super::*;

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct JobRow {
    pub id: Uuid,
    pub video_id: Uuid,
    pub state: JobState,
    pub attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub concealed_audio_frames: i64,
}

pub async fn get_job(pool: &PgPool, id: JobId) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "SELECT id, video_id, state, attempts, error_code, error_message, created_at,
                scheduled_at, started_at, finished_at, concealed_audio_frames
         FROM jobs WHERE id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

/// Fails a job and its video (unless already published) with a stable code, in one
/// transaction. False when the job had already ended.
pub async fn fail_job(
    pool: &PgPool,
    job: JobId,
    code: ErrorCode,
    message: &str,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let failed = slices::fail_job_in(&mut tx, job, code, message).await?;
    tx.commit().await?;
    Ok(failed)
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct VideoRow {
    pub id: Uuid,
    pub state: VideoState,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub frames: Option<i64>,
    pub duration_ms: Option<i64>,
    pub source_bytes: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub hls_master_key: Option<String>,
    pub cover_key: Option<String>,
    pub live_tier: Option<String>,
    #[serde(skip)]
    pub source_key: String,
    pub published_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its playback URLs are signed and expire.
    pub signed_playback: bool,
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct RenditionRow {
    pub name: String,
    pub container: String,
    pub codec: String,
    pub codec_string: Option<String>,
    pub prefetch_bytes_3s: Option<i64>,
    pub hls_playlist_key: Option<String>,
    pub object_key: String,
    pub width: i32,
    pub height: i32,
    pub frames: i64,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub bitrate: i64,
}

pub async fn get_video(pool: &PgPool, id: VideoId) -> sqlx::Result<Option<VideoRow>> {
    sqlx::query_as(
        "SELECT id, state, width, height, frames, duration_ms, source_bytes, error_code,
                error_message, hls_master_key, cover_key, live_tier, source_key, published_at,
                created_at, updated_at, signed_playback
         FROM videos WHERE id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
}

/// The renditions viewers get now: those of the live tier.
pub async fn live_renditions(pool: &PgPool, id: VideoId) -> sqlx::Result<Vec<RenditionRow>> {
    sqlx::query_as(
        "SELECT r.name, r.container, r.codec, r.codec_string, r.prefetch_bytes_3s, r.hls_playlist_key,
                r.object_key, r.width, r.height, r.frames, r.duration_ms, r.size_bytes, r.bitrate
         FROM renditions r JOIN videos v
           ON v.id = r.video_id AND r.job_id = v.live_job_id AND r.tier = v.live_tier
         WHERE r.video_id = $1 ORDER BY r.codec, r.height, r.width",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
}

/// Jobs of a video, newest first.
pub async fn jobs_of_video(pool: &PgPool, id: VideoId) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT id, video_id, state, attempts, error_code, error_message, created_at,
                scheduled_at, started_at, finished_at, concealed_audio_frames
         FROM jobs WHERE video_id = $1 ORDER BY created_at DESC",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
}

/// Whether a video plays from signed URLs only; `None` while it has no row (a live-ingest
/// upload writes its objects before the video exists).
pub async fn signed_playback(pool: &PgPool, video: VideoId) -> sqlx::Result<Option<bool>> {
    let row: Option<(bool,)> = sqlx::query_as("SELECT signed_playback FROM videos WHERE id = $1")
        .bind(video.as_uuid())
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(s,)| s))
}
