//! Tiers: the exactly-once merge, publishing a tier's renditions, and the swap that moves a
//! video's playback pointer to a newer tier.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::webhooks::EventType;
use vtx_domain::{JobId, JobPlan, JobState, Lifecycle, Tier, TierState, VideoId, VideoState, keys};

use super::*;

/// (video, plan, audio key, merge attempts so far)
type MergeClaimRow = (Uuid, Option<Json<JobPlan>>, Option<String>, i32);

/// The context for merging a tier whose slices are all encoded; `None` if it is not (or no
/// longer) waiting for its merge.
pub async fn claim_merge(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
) -> sqlx::Result<Option<WorkContext>> {
    // Each claim counts an attempt, durably: a merge that kills its worker is redelivered and
    // counted again, so retries stay bounded.
    let row: Option<MergeClaimRow> = sqlx::query_as(
        "UPDATE job_tiers t SET merge_attempts = t.merge_attempts + 1
         FROM jobs j
         WHERE j.id = t.job_id AND t.job_id = $1 AND t.tier = $2 AND t.state = $3
           AND NOT j.state = ANY($4)
         RETURNING j.video_id, j.plan, j.audio_key, t.merge_attempts",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind(TierState::Merging)
    .bind(JobState::terminal())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(video, plan, audio_key, attempts)| {
        plan.map(|Json(plan)| WorkContext {
            video_id: VideoId::from_uuid(video),
            plan,
            audio_key,
            attempts: attempts.max(0) as u32,
        })
    }))
}

/// A finished rendition, ready to be recorded.
#[derive(Clone, Debug)]
pub struct NewRendition {
    pub name: String,
    /// `mp4`, or `hls` for a rendition that is only a media playlist (a live-ingest fast tier).
    pub container: &'static str,
    pub codec: String,
    pub codec_string: String,
    pub object_key: String,
    pub hls_playlist_key: Option<String>,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_ms: u64,
    pub size_bytes: u64,
    pub bitrate: u64,
    pub prefetch_bytes_3s: u64,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
}

impl NewRendition {
    /// The HLS rendition of a tier made of chunks, whose objects are under `dest`.
    pub fn hls(dest: &str, r: &vtx_domain::live_ingest::PackagedRendition) -> Self {
        let playlist = format!("{dest}hls/{}/index.m3u8", r.name);
        NewRendition {
            name: r.name.clone(),
            container: "hls",
            codec: r.codec.clone(),
            codec_string: r.codec_string.clone(),
            object_key: playlist.clone(),
            hls_playlist_key: Some(playlist),
            width: r.width,
            height: r.height,
            frames: r.frames,
            duration_ms: (r.seconds * 1000.0).round() as u64,
            size_bytes: r.bytes,
            bitrate: r.average_bitrate,
            prefetch_bytes_3s: r.prefetch_bytes_3s,
            psnr: None,
            ssim: None,
        }
    }
}

/// A packaged tier, verified and uploaded, about to go live.
#[derive(Clone, Debug)]
pub struct TierOutput {
    pub renditions: Vec<NewRendition>,
    pub hls_master_key: Option<String>,
    pub cover_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The tier is live now.
    Live,
    /// The tier was already live (a duplicate merge delivery): nothing changed.
    AlreadyDone,
}

/// Puts a merged tier live in one transaction: its renditions recorded, the video's playback
/// pointer moved to them, the replaced tier's objects scheduled for deletion after `grace`,
/// and either the next tier's slices queued or the job finished.
pub async fn publish_tier(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
    output: &TierOutput,
    next_tier: Option<Tier>,
    grace: Duration,
) -> sqlx::Result<Publish> {
    let mut tx = pool.begin().await?;
    if !finish_merging_tier(&mut tx, job, tier).await? {
        return Ok(Publish::AlreadyDone);
    }
    let (video_id, plan): (Uuid, Option<Json<JobPlan>>) =
        sqlx::query_as("SELECT video_id, plan FROM jobs WHERE id = $1")
            .bind(job.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
    let plan = plan.map(|Json(p)| p);
    let facts = plan.as_ref().map(|p| VideoFacts {
        width: p.display_width,
        height: p.display_height,
        frames: p.frames,
        duration_ms: (p.duration_seconds * 1000.0).round() as u64,
    });
    go_live(
        &mut tx,
        VideoId::from_uuid(video_id),
        job,
        tier,
        output,
        facts.as_ref(),
        grace,
    )
    .await?;
    match next_tier {
        Some(next) => {
            let n: Option<(i32,)> = sqlx::query_as(
                "UPDATE job_tiers SET state = $3, started_at = now()
                 WHERE job_id = $1 AND tier = $2 AND state = ANY($4) RETURNING slices_total",
            )
            .bind(job.as_uuid())
            .bind(next)
            .bind_move(move_to(TierState::Encoding))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((n,)) = n {
                enqueue_slices(&mut tx, job, next, &longest_first(plan.as_ref(), n as u32)).await?;
            }
        }
        None => {
            succeed_job(&mut tx, job).await?;
            sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
                .bind(keys::work(job))
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(Publish::Live)
}

/// Inside a publishing transaction: the job has nothing left to run.
pub(crate) async fn succeed_job(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "UPDATE jobs SET state = $2, finished_at = now(), updated_at = now()
         WHERE id = $1 AND state = ANY($3)",
    )
    .bind(job.as_uuid())
    .bind_move(move_to(JobState::Succeeded))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// Inside a publishing transaction: the tier waiting for its merge is done. False when it was
/// not waiting (a duplicate delivery): the caller changes nothing.
pub(crate) async fn finish_merging_tier(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
    tier: Tier,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "UPDATE job_tiers SET state = $3, finished_at = now()
         WHERE job_id = $1 AND tier = $2 AND state = ANY($4)",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind_move(move_to(TierState::Done))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// What the video row says about the picture of its live tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoFacts {
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_ms: u64,
}

/// Inside a publishing transaction: records a tier's renditions and moves the video's playback
/// pointer to them; the replaced tier's objects are deleted after `grace`.
pub(crate) async fn go_live(
    tx: &mut Transaction<'static, Postgres>,
    video: VideoId,
    job: JobId,
    tier: Tier,
    output: &TierOutput,
    facts: Option<&VideoFacts>,
    grace: Duration,
) -> sqlx::Result<()> {
    let video_id = video.as_uuid();
    insert_renditions(tx, video, job, tier, &output.renditions).await?;
    // The swap: readers see the old tier or the new one, never a mix.
    let previous: Option<(Option<String>, Option<Uuid>)> =
        sqlx::query_as("SELECT live_tier, live_job_id FROM videos WHERE id = $1 FOR UPDATE")
            .bind(video_id)
            .fetch_optional(&mut **tx)
            .await?;
    // The first tier to go live publishes the video; a later one only moves the pointer (a
    // published video stays published: the domain has no published -> published move).
    let publish = move_to(VideoState::Published);
    let moved = sqlx::query(
        "UPDATE videos SET state = CASE WHEN state = ANY($12) THEN $11 ELSE state END,
                live_tier = $3, live_job_id = $4, hls_master_key = $5, cover_key = $6,
                width = $7, height = $8, frames = $9, duration_ms = $10,
                published_at = COALESCE(published_at, now()), updated_at = now()
         WHERE id = $1 AND (state = ANY($12) OR state = $2)",
    )
    .bind(video_id)
    .bind(VideoState::Published)
    .bind(tier)
    .bind(job.as_uuid())
    .bind(&output.hls_master_key)
    .bind(&output.cover_key)
    .bind(facts.map(|f| f.width as i32))
    .bind(facts.map(|f| f.height as i32))
    .bind(facts.map(|f| f.frames as i64))
    .bind(facts.map(|f| f.duration_ms as i64))
    .bind_move(publish)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved == 1 {
        let event = match &previous {
            Some((Some(_), _)) => EventType::VideoUpgraded,
            _ => EventType::VideoPublished,
        };
        super::webhooks::record_event(tx, event, Some(video), None).await?;
    }
    if let Some((Some(old_tier), Some(old_job))) = previous
        && let Ok(old_tier) = old_tier.parse::<Tier>()
        && (old_tier, old_job) != (tier, job.as_uuid())
    {
        // Players may hold the old URLs for a while: keep those objects through the grace.
        sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now() + make_interval(secs => $2))")
            .bind(keys::tier_output(video, JobId::from_uuid(old_job), old_tier))
            .bind(secs(grace))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Records renditions of a tier (a rendition already recorded is left as it is).
pub(crate) async fn insert_renditions(
    tx: &mut Transaction<'static, Postgres>,
    video: VideoId,
    job: JobId,
    tier: Tier,
    renditions: &[NewRendition],
) -> sqlx::Result<()> {
    let video_id = video.as_uuid();
    for r in renditions {
        sqlx::query(
            "INSERT INTO renditions (video_id, job_id, tier, name, container, object_key, width, height,
                                     frames, duration_ms, size_bytes, bitrate, codec, codec_string,
                                     prefetch_bytes_3s, hls_playlist_key, psnr, ssim)
             VALUES ($1, $2, $3, $4, $18, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT DO NOTHING",
        )
        .bind(video_id)
        .bind(job.as_uuid())
        .bind(tier.as_str())
        .bind(&r.name)
        .bind(&r.object_key)
        .bind(r.width as i32)
        .bind(r.height as i32)
        .bind(r.frames as i64)
        .bind(r.duration_ms as i64)
        .bind(r.size_bytes as i64)
        .bind(r.bitrate as i64)
        .bind(&r.codec)
        .bind(&r.codec_string)
        .bind(r.prefetch_bytes_3s as i64)
        .bind(&r.hls_playlist_key)
        .bind(r.psnr)
        .bind(r.ssim)
        .bind(r.container)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct TierRow {
    pub tier: String,
    pub state: TierState,
    pub slices_total: i32,
    pub slices_done: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub encoded_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub concealed_video_frames: i64,
}

/// Frames of the source a tier's encodes could not decode and concealed, so far.
pub async fn tier_concealed_frames(pool: &PgPool, job: JobId, tier: Tier) -> sqlx::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT concealed_video_frames FROM job_tiers WHERE job_id = $1 AND tier = $2",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .fetch_one(pool)
    .await?;
    Ok(n.max(0) as u64)
}

pub async fn tiers_of_job(pool: &PgPool, job: JobId) -> sqlx::Result<Vec<TierRow>> {
    sqlx::query_as(
        "SELECT tier, state, slices_total, slices_done, error_code, error_message, created_at, started_at,
                encoded_at, finished_at, concealed_video_frames
         FROM job_tiers WHERE job_id = $1
         ORDER BY array_position($2, tier)",
    )
    .bind(job.as_uuid())
    .bind(Tier::ALL.to_vec())
    .fetch_all(pool)
    .await
}
