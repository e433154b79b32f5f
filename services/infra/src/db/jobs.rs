//! Jobs and videos as the status API reads them, and failing a job.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use uuid::Uuid;
use vtx_domain::{ErrorCode, ExtremeState, JobId, JobState, Tier, VideoId, VideoState};

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

/// How long ago `job` was created (its upload completed).
pub async fn since_job_created(pool: &PgPool, job: JobId) -> sqlx::Result<std::time::Duration> {
    let secs: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM jobs WHERE id = $1",
    )
    .bind(job.as_uuid())
    .fetch_one(pool)
    .await?;
    Ok(std::time::Duration::from_secs_f64(secs.max(0.0)))
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

#[derive(Clone, Debug, FromRow, Serialize, serde::Deserialize)]
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

/// All a video's status body shows, read in one query: the video, the renditions it plays
/// now, its extreme request and the renditions that added, and its newest job's concealment.
#[derive(Debug, FromRow)]
pub struct VideoStatusRow {
    #[sqlx(flatten)]
    pub video: VideoRow,
    /// The live tier's renditions (MP4 and, for a live-ingest fast tier, HLS).
    pub live: Json<Vec<RenditionRow>>,
    /// The extreme renditions, once the extreme tier is added.
    pub extreme: Json<Vec<RenditionRow>>,
    pub extreme_state: Option<ExtremeState>,
    pub extreme_reason: Option<String>,
    pub extreme_score: Option<i64>,
    pub extreme_result: Option<Json<serde_json::Value>>,
    /// Master playlist keys by codec set (`hevc`, `av1+hevc`), once the extreme tier is added.
    pub extreme_hls_masters: Option<Json<serde_json::Value>>,
    pub job_id: Option<Uuid>,
    pub concealed_audio_frames: Option<i64>,
    /// The most any tier of the newest job concealed (every tier decodes the same source).
    pub concealed_video_frames: Option<i64>,
}

impl VideoStatusRow {
    /// The master playlist listing the H.264 variants beside the extreme ones of `codec_set`.
    pub fn extreme_hls_master(&self, codec_set: &str) -> Option<&str> {
        if self.extreme_state != Some(ExtremeState::Added) {
            return None;
        }
        self.extreme_hls_masters
            .as_ref()?
            .0
            .get(codec_set)?
            .as_str()
    }
}

pub async fn video_status(pool: &PgPool, id: VideoId) -> sqlx::Result<Option<VideoStatusRow>> {
    const RENDITION: &str = "r.name, r.container, r.codec, r.codec_string, r.prefetch_bytes_3s,
        r.hls_playlist_key, r.object_key, r.width, r.height, r.frames, r.duration_ms,
        r.size_bytes, r.bitrate";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT v.id, v.state, v.width, v.height, v.frames, v.duration_ms, v.source_bytes,
                v.error_code, v.error_message, v.hls_master_key, v.cover_key, v.live_tier,
                v.source_key, v.published_at, v.created_at, v.updated_at, v.signed_playback,
                COALESCE((SELECT json_agg(x ORDER BY x.codec, x.height, x.width)
                          FROM (SELECT {RENDITION} FROM renditions r
                                WHERE r.video_id = v.id AND r.job_id = v.live_job_id
                                  AND r.tier = v.live_tier) x), '[]') AS live,
                COALESCE((SELECT json_agg(x ORDER BY x.codec, x.height, x.width)
                          FROM (SELECT {RENDITION} FROM renditions r
                                WHERE r.video_id = v.id AND r.job_id = e.job_id
                                  AND r.tier = $3 AND e.state = $2) x), '[]') AS extreme,
                e.state AS extreme_state, e.reason AS extreme_reason,
                e.score AS extreme_score, e.result AS extreme_result,
                e.hls_masters AS extreme_hls_masters,
                j.id AS job_id, j.concealed_audio_frames,
                (SELECT max(t.concealed_video_frames) FROM job_tiers t WHERE t.job_id = j.id)
                    AS concealed_video_frames
         FROM videos v
         LEFT JOIN extreme_requests e ON e.video_id = v.id
         LEFT JOIN LATERAL (SELECT id, concealed_audio_frames FROM jobs
                            WHERE video_id = v.id ORDER BY created_at DESC LIMIT 1) j ON true
         WHERE v.id = $1"
    )))
    .bind(id.as_uuid())
    .bind(ExtremeState::Added)
    .bind(Tier::Extreme)
    .fetch_optional(pool)
    .await
}

/// Whether a video plays from signed URLs only, as its upload asked (a live-ingest upload
/// writes objects before its video row exists); `None` for an unknown video.
pub async fn signed_playback(pool: &PgPool, video: VideoId) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT signed_playback FROM videos WHERE id = $1
         UNION ALL
         SELECT signed_playback FROM uploads WHERE video_id = $1
         LIMIT 1",
    )
    .bind(video.as_uuid())
    .fetch_optional(pool)
    .await
}
