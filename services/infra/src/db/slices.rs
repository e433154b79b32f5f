//! Slice leases: claim, heartbeat, completion (which hands a tier to its merge) and failure.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::webhooks::EventType;
use vtx_domain::{
    ErrorCode, ExtremeState, JobId, JobPlan, JobState, Lifecycle, SliceState, Task, Tier,
    TierState, VideoId, VideoState, keys,
};

use super::*;
use crate::outbox;

/// What a worker needs to encode a slice or merge a tier.
#[derive(Clone, Debug)]
pub struct WorkContext {
    pub video_id: VideoId,
    pub plan: JobPlan,
    pub audio_key: Option<String>,
    /// Deliveries of this slice so far, this one included (merges: 0).
    pub attempts: u32,
}

#[derive(FromRow)]
struct JobContextRow {
    video_id: Uuid,
    state: JobState,
    plan: Option<Json<JobPlan>>,
    audio_key: Option<String>,
}

async fn job_context(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
) -> sqlx::Result<Option<JobContextRow>> {
    sqlx::query_as("SELECT video_id, state, plan, audio_key FROM jobs WHERE id = $1")
        .bind(job.as_uuid())
        .fetch_optional(&mut **tx)
        .await
}

/// Takes a slice for `owner` with a lease: when it is queued, running under an expired lease
/// (its worker vanished), or already `owner`'s (a retry in place). Each claim counts an attempt.
/// `None` when it is done, held by another live lease, or its job has ended.
pub async fn claim_slice(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
    index: u32,
    owner: &str,
    lease: Duration,
) -> sqlx::Result<Option<WorkContext>> {
    let mut tx = pool.begin().await?;
    let Some(ctx) = job_context(&mut tx, job).await? else {
        return Ok(None);
    };
    if ctx.state.is_terminal() {
        return Ok(None);
    }
    let attempts: Option<(i32,)> = sqlx::query_as(
        "UPDATE slices SET state = $6, attempts = attempts + 1, lease_owner = $4,
                lease_expires_at = now() + make_interval(secs => $5), started_at = COALESCE(started_at, now())
         WHERE job_id = $1 AND tier = $2 AND idx = $3 AND state = ANY($7)
           AND (state = $8 OR lease_expires_at < now() OR lease_owner = $4)
         RETURNING attempts",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind(index as i32)
    .bind(owner)
    .bind(secs(lease))
    .bind_move(move_to(SliceState::Running))
    .bind(SliceState::Queued)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts,)) = attempts else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE jobs SET state = $2, started_at = COALESCE(started_at, now()), updated_at = now()
         WHERE id = $1 AND state = ANY($3)",
    )
    .bind(job.as_uuid())
    .bind_move(move_to(JobState::Running))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(Json(plan)) = ctx.plan else {
        return Ok(None);
    };
    Ok(Some(WorkContext {
        video_id: VideoId::from_uuid(ctx.video_id),
        plan,
        audio_key: ctx.audio_key,
        attempts: attempts.max(0) as u32,
    }))
}

/// Extends a held lease. False when the lease was lost (expired and taken by another worker, or
/// the slice is no longer running): the holder should stop.
pub async fn heartbeat_slice(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
    index: u32,
    owner: &str,
    lease: Duration,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE slices SET lease_expires_at = now() + make_interval(secs => $5)
         WHERE job_id = $1 AND tier = $2 AND idx = $3 AND state = $6 AND lease_owner = $4",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind(index as i32)
    .bind(owner)
    .bind(secs(lease))
    .bind(SliceState::Running)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceDone {
    /// Counted; `merge_queued` when this was the tier's last slice and its merge is queued.
    Counted { merge_queued: bool },
    /// Already done (a duplicate delivery, or a worker that lost its lease finished late).
    Duplicate,
}

/// Marks a slice done and counts it. The one transaction that completes the last slice flips
/// `merge_queued` and queues the merge: exactly one merge per (job, tier), whatever the
/// concurrency or duplicates.
pub async fn complete_slice(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
    index: u32,
    owner: &str,
    concealed_video_frames: u64,
) -> sqlx::Result<SliceDone> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE slices SET state = $5, finished_at = now(), finished_by = $4, lease_owner = NULL,
                           lease_expires_at = NULL
         WHERE job_id = $1 AND tier = $2 AND idx = $3 AND state = ANY($6)",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind(index as i32)
    .bind(owner)
    .bind_move(move_to(SliceState::Done))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(SliceDone::Duplicate);
    }
    // The row lock serialises concurrent completions: each sees the count after its own, so
    // exactly one of them sees the total.
    let (done, total): (i32, i32) = sqlx::query_as(
        "UPDATE job_tiers SET slices_done = slices_done + 1,
                              concealed_video_frames = concealed_video_frames + $3
         WHERE job_id = $1 AND tier = $2
         RETURNING slices_done, slices_total",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .bind(concealed_video_frames as i64)
    .fetch_one(&mut *tx)
    .await?;
    let queue_merge = if done == total {
        sqlx::query(
            "UPDATE job_tiers SET state = $3, merge_queued = true, encoded_at = now()
             WHERE job_id = $1 AND tier = $2 AND state = ANY($4) AND NOT merge_queued",
        )
        .bind(job.as_uuid())
        .bind(tier)
        .bind_move(move_to(TierState::Merging))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1
    } else {
        false
    };
    let merge_queued = queue_merge;
    if merge_queued {
        outbox::enqueue(&mut tx, &Task::Merge { job_id: job, tier }).await?;
    }
    tx.commit().await?;
    Ok(SliceDone::Counted { merge_queued })
}

/// A tier failed for good. The job fails with `code`; the video fails too unless an earlier
/// tier already published it (then it stays playable as it is).
pub async fn fail_tier(
    pool: &PgPool,
    job: JobId,
    tier: Tier,
    code: ErrorCode,
    message: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE job_tiers SET state = $5, error_code = $3, error_message = $4, finished_at = now()
         WHERE job_id = $1 AND tier = $2 AND state = ANY($6)",
    )
    .bind(job.as_uuid())
    .bind(tier)
    .bind(code.as_str())
    .bind(message)
    .bind_move(move_to(TierState::Failed))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE extreme_requests SET state = $3, finished_at = now(), result = $2
         WHERE job_id = $1 AND state = ANY($4)",
    )
    .bind(job.as_uuid())
    .bind(sqlx::types::Json(
        serde_json::json!({"error": code.as_str(), "message": message}),
    ))
    .bind_move(move_to(ExtremeState::Failed))
    .execute(&mut *tx)
    .await?;
    fail_job_in(&mut tx, job, code, message).await?;
    tx.commit().await
}

/// Fails a job (and its video if not yet published, or published only as the instant tier)
/// inside a transaction.
pub(crate) async fn fail_job_in(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
    code: ErrorCode,
    message: &str,
) -> sqlx::Result<bool> {
    let video: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE jobs SET state = $4, error_code = $2, error_message = $3, finished_at = now(), updated_at = now()
         WHERE id = $1 AND state = ANY($5) RETURNING video_id",
    )
    .bind(job.as_uuid())
    .bind(code.as_str())
    .bind(message)
    .bind_move(move_to(JobState::Failed))
    .fetch_optional(&mut **tx)
    .await?;
    let Some((video_id,)) = video else {
        return Ok(false);
    };
    let failed = sqlx::query(
        "UPDATE videos SET state = $4, error_code = $2, error_message = $3, updated_at = now()
         WHERE id = $1 AND state = ANY($5)",
    )
    .bind(video_id)
    .bind(code.as_str())
    .bind(message)
    .bind_move(move_to(VideoState::Failed))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // What is live may be only the instant tier: the upload as it came, never decoded. When no
    // encode of it succeeded (a damaged source, say), that provisional publication is withdrawn:
    // the video fails as it would have without instant publish. This is the one way a published
    // video fails (`VideoState` allows no published -> failed move otherwise).
    let withdrawn = sqlx::query(
        "UPDATE videos SET state = $4, error_code = $2, error_message = $3, live_tier = NULL,
                live_job_id = NULL, hls_master_key = NULL, cover_key = NULL, updated_at = now()
         WHERE id = $1 AND state = $5 AND live_tier = $6 AND live_job_id = $7",
    )
    .bind(video_id)
    .bind(code.as_str())
    .bind(message)
    .bind(VideoState::Failed)
    .bind(VideoState::Published)
    .bind(Tier::Instant)
    .bind(job.as_uuid())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if failed + withdrawn == 1 {
        let video = Some(VideoId::from_uuid(video_id));
        super::webhooks::record_event(tx, EventType::VideoFailed, video, None).await?;
    }
    if withdrawn == 1 {
        sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
            .bind(keys::tier_output(
                VideoId::from_uuid(video_id),
                job,
                Tier::Instant,
            ))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
        .bind(keys::work(job))
        .execute(&mut **tx)
        .await?;
    Ok(true)
}
