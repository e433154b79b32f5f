//! Durable completion tracking for the distributed pipeline: a job's plan, its tiers and their
//! slices, leases, the exactly-once merge, and the tier swap that moves the playback pointer.
//!
//! Every transition is a guarded `UPDATE`, and every message it implies is written to the outbox
//! in the same transaction, so a crash at any point leaves state and queues in agreement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::{
    ErrorCode, JobId, JobPlan, JobState, SliceState, Task, Tier, TierState, VideoId, VideoState,
    keys,
};

use crate::outbox;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A job's video, state and source object (what the scheduler needs to plan it).
/// A job's source: its video, state, source object and the rotation its upload declared.
pub struct JobSource {
    pub video: VideoId,
    pub state: JobState,
    pub source_key: String,
    pub declared_rotation: Option<u32>,
    /// An extreme job (its only tier is extreme), not an upload's.
    pub extreme: bool,
}

pub async fn job_source(pool: &PgPool, job: JobId) -> sqlx::Result<Option<JobSource>> {
    let row: Option<(Uuid, String, String, Option<i32>, String)> = sqlx::query_as(
        "SELECT j.video_id, j.state, v.source_key, u.rotation, j.kind FROM jobs j
         JOIN videos v ON v.id = j.video_id LEFT JOIN uploads u ON u.id = v.upload_id
         WHERE j.id = $1",
    )
    .bind(job.as_uuid())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(v, state, key, rotation, kind)| {
        state.parse().ok().map(|state| JobSource {
            video: VideoId::from_uuid(v),
            state,
            source_key: key,
            declared_rotation: rotation.map(|r| r as u32),
            extreme: kind == "extreme",
        })
    }))
}

/// Counts an attempt at planning a job; returns the count so far, this one included.
pub async fn count_plan_attempt(pool: &PgPool, job: JobId) -> sqlx::Result<u32> {
    let (n,): (i32,) =
        sqlx::query_as("UPDATE jobs SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts")
            .bind(job.as_uuid())
            .fetch_one(pool)
            .await?;
    Ok(n.max(0) as u32)
}

/// Records the scheduler's plan and creates the tiers and their slices; the first tier's slice
/// tasks are queued at once, later tiers wait for the one before them to go live. Returns false
/// (changing nothing) unless the job was still queued.
pub async fn record_plan(
    pool: &PgPool,
    job: JobId,
    plan: &JobPlan,
    audio_key: Option<&str>,
    concealed_audio_frames: u64,
    tiers: &[Tier],
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE jobs SET state = $2, scheduled_at = now(), plan = $3, audio_key = $4, updated_at = now(),
                         concealed_audio_frames = $6
         WHERE id = $1 AND state = ANY($5)",
    )
    .bind(job.as_uuid())
    .bind(JobState::Scheduled.as_str())
    .bind(Json(plan))
    .bind(audio_key)
    .bind(JobState::predecessors_of(JobState::Scheduled))
    .bind(concealed_audio_frames as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE extreme_requests SET state = 'encoding' WHERE job_id = $1 AND state = 'queued'",
    )
    .bind(job.as_uuid())
    .execute(&mut *tx)
    .await?;
    let n = plan.slices.len() as i32;
    for (i, tier) in tiers.iter().enumerate() {
        let first = i == 0;
        sqlx::query(
            "INSERT INTO job_tiers (job_id, tier, state, slices_total, started_at)
             VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
        )
        .bind(job.as_uuid())
        .bind(tier.as_str())
        .bind(
            if first {
                TierState::Encoding
            } else {
                TierState::Waiting
            }
            .as_str(),
        )
        .bind(n)
        .bind(first)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO slices (job_id, tier, idx, state)
             SELECT $1, $2, g, $3 FROM generate_series(0, $4 - 1) g",
        )
        .bind(job.as_uuid())
        .bind(tier.as_str())
        .bind(SliceState::Queued.as_str())
        .bind(n)
        .execute(&mut *tx)
        .await?;
        if first {
            enqueue_slices(&mut tx, job, *tier, &longest_first(Some(plan), n as u32)).await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// The `n` slice indices in the order their tasks are queued: longest window first
/// (`slicing::longest_first`), or in index order without a plan.
fn longest_first(plan: Option<&JobPlan>, n: u32) -> Vec<u32> {
    match plan.filter(|p| p.slices.len() == n as usize) {
        Some(p) => vtx_domain::slicing::longest_first(&p.slices)
            .into_iter()
            .map(|i| p.slices[i].index)
            .collect(),
        None => (0..n).collect(),
    }
}

async fn enqueue_slices(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
    tier: Tier,
    order: &[u32],
) -> sqlx::Result<()> {
    for &index in order {
        outbox::enqueue(
            tx,
            &Task::EncodeSlice {
                job_id: job,
                tier,
                index,
            },
        )
        .await?;
    }
    Ok(())
}

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
    state: String,
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
    if ctx
        .state
        .parse::<JobState>()
        .is_ok_and(JobState::is_terminal)
    {
        return Ok(None);
    }
    let attempts: Option<(i32,)> = sqlx::query_as(
        "UPDATE slices SET state = 'running', attempts = attempts + 1, lease_owner = $4,
                lease_expires_at = now() + make_interval(secs => $5), started_at = COALESCE(started_at, now())
         WHERE job_id = $1 AND tier = $2 AND idx = $3
           AND (state = 'queued'
                OR (state = 'running' AND (lease_expires_at < now() OR lease_owner = $4)))
         RETURNING attempts",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .bind(index as i32)
    .bind(owner)
    .bind(secs(lease))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts,)) = attempts else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, now()), updated_at = now()
         WHERE id = $1 AND state IN ('scheduled', 'running')",
    )
    .bind(job.as_uuid())
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
         WHERE job_id = $1 AND tier = $2 AND idx = $3 AND state = 'running' AND lease_owner = $4",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .bind(index as i32)
    .bind(owner)
    .bind(secs(lease))
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
        "UPDATE slices SET state = 'done', finished_at = now(), finished_by = $4, lease_owner = NULL,
                           lease_expires_at = NULL
         WHERE job_id = $1 AND tier = $2 AND idx = $3 AND state = 'running'",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .bind(index as i32)
    .bind(owner)
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
            "UPDATE job_tiers SET state = 'merging', merge_queued = true, encoded_at = now()
             WHERE job_id = $1 AND tier = $2 AND state = 'encoding' AND NOT merge_queued",
        )
        .bind(job.as_uuid())
        .bind(tier.as_str())
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
        "UPDATE job_tiers SET state = 'failed', error_code = $3, error_message = $4, finished_at = now()
         WHERE job_id = $1 AND tier = $2 AND state NOT IN ('done', 'failed')",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
    .bind(code.as_str())
    .bind(message)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE extreme_requests SET state = 'failed', finished_at = now(), result = $2
         WHERE job_id = $1 AND state IN ('queued', 'encoding')",
    )
    .bind(job.as_uuid())
    .bind(sqlx::types::Json(
        serde_json::json!({"error": code.as_str(), "message": message}),
    ))
    .execute(&mut *tx)
    .await?;
    fail_job_in(&mut tx, job, code, message).await?;
    tx.commit().await
}

/// Fails a job (and its video if not yet published) inside a transaction.
pub(crate) async fn fail_job_in(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
    code: ErrorCode,
    message: &str,
) -> sqlx::Result<bool> {
    let video: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, finished_at = now(), updated_at = now()
         WHERE id = $1 AND state = ANY($4) RETURNING video_id",
    )
    .bind(job.as_uuid())
    .bind(code.as_str())
    .bind(message)
    .bind(JobState::predecessors_of(JobState::Failed))
    .fetch_optional(&mut **tx)
    .await?;
    let Some((video_id,)) = video else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE videos SET state = 'failed', error_code = $2, error_message = $3, updated_at = now()
         WHERE id = $1 AND state = 'processing'",
    )
    .bind(video_id)
    .bind(code.as_str())
    .bind(message)
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
        .bind(keys::work(job))
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// The context for merging a tier whose slices are all encoded; `None` if it is not (or no
/// longer) waiting for its merge.
/// (video, plan, audio key, merge attempts so far)
type MergeClaimRow = (Uuid, Option<Json<JobPlan>>, Option<String>, i32);

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
         WHERE j.id = t.job_id AND t.job_id = $1 AND t.tier = $2 AND t.state = 'merging'
           AND j.state NOT IN ('failed', 'succeeded')
         RETURNING j.video_id, j.plan, j.audio_key, t.merge_attempts",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
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
    /// `mp4`, or `hls` for a rendition that is only a media playlist (a pipelined fast tier).
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
                "UPDATE job_tiers SET state = 'encoding', started_at = now()
                 WHERE job_id = $1 AND tier = $2 AND state = 'waiting' RETURNING slices_total",
            )
            .bind(job.as_uuid())
            .bind(next.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((n,)) = n {
                enqueue_slices(&mut tx, job, next, &longest_first(plan.as_ref(), n as u32)).await?;
            }
        }
        None => {
            sqlx::query(
                "UPDATE jobs SET state = 'succeeded', finished_at = now(), updated_at = now()
                 WHERE id = $1 AND state = 'running'",
            )
            .bind(job.as_uuid())
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
                .bind(keys::work(job))
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(Publish::Live)
}

/// Inside a publishing transaction: the tier waiting for its merge is done. False when it was
/// not waiting (a duplicate delivery): the caller changes nothing.
pub(crate) async fn finish_merging_tier(
    tx: &mut Transaction<'static, Postgres>,
    job: JobId,
    tier: Tier,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "UPDATE job_tiers SET state = 'done', finished_at = now()
         WHERE job_id = $1 AND tier = $2 AND state = 'merging'",
    )
    .bind(job.as_uuid())
    .bind(tier.as_str())
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
    sqlx::query(
        "UPDATE videos SET state = $2, live_tier = $3, live_job_id = $4, hls_master_key = $5, cover_key = $6,
                width = $7, height = $8, frames = $9, duration_ms = $10,
                published_at = COALESCE(published_at, now()), updated_at = now()
         WHERE id = $1 AND state IN ('processing', 'published')",
    )
    .bind(video_id)
    .bind(VideoState::Published.as_str())
    .bind(tier.as_str())
    .bind(job.as_uuid())
    .bind(&output.hls_master_key)
    .bind(&output.cover_key)
    .bind(facts.map(|f| f.width as i32))
    .bind(facts.map(|f| f.height as i32))
    .bind(facts.map(|f| f.frames as i64))
    .bind(facts.map(|f| f.duration_ms as i64))
    .execute(&mut **tx)
    .await?;
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

/// Puts slices whose lease expired (their worker vanished) back in the queue. Returns how many.
pub async fn reap_expired_leases(pool: &PgPool) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "UPDATE slices s SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
         FROM job_tiers t
         WHERE s.state = 'running' AND s.lease_expires_at < now()
           AND t.job_id = s.job_id AND t.tier = s.tier AND t.state = 'encoding'
         RETURNING s.job_id, s.tier, s.idx",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (job, tier, idx) in &rows {
        if let Ok(tier) = tier.parse::<Tier>() {
            let task = Task::EncodeSlice {
                job_id: JobId::from_uuid(*job),
                tier,
                index: *idx as u32,
            };
            outbox::enqueue(&mut tx, &task).await?;
        }
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Fails tiers that have waited for their merge longer than `older_than`: a merge that kept
/// killing its worker ends in the dead-letter queue, and its tier would otherwise stay `merging`
/// for ever. Returns the jobs failed.
pub async fn fail_stale_merges(pool: &PgPool, older_than: Duration) -> sqlx::Result<Vec<JobId>> {
    let mut tx = pool.begin().await?;
    let stale: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE job_tiers SET state = 'failed', error_code = $1, finished_at = now(),
                error_message = 'the merge did not finish in time'
         WHERE state = 'merging' AND encoded_at < now() - make_interval(secs => $2)
         RETURNING job_id, tier",
    )
    .bind(ErrorCode::RetriesExhausted.as_str())
    .bind(secs(older_than))
    .fetch_all(&mut *tx)
    .await?;
    let mut failed = Vec::new();
    for (job, tier) in stale {
        let job = JobId::from_uuid(job);
        let message = format!("the {tier} tier's merge did not finish in time");
        fail_job_in(&mut tx, job, ErrorCode::RetriesExhausted, &message).await?;
        failed.push(job);
    }
    tx.commit().await?;
    Ok(failed)
}

/// Garbage whose time has come (at most `limit` entries).
pub async fn due_garbage(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as(
        "SELECT id, prefix FROM garbage WHERE delete_after <= now() ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn forget_garbage(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM garbage WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

#[derive(Clone, Debug, FromRow, Serialize)]
pub struct TierRow {
    pub tier: String,
    pub state: String,
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
         ORDER BY CASE tier WHEN 'fast' THEN 0 WHEN 'high' THEN 1 ELSE 2 END",
    )
    .bind(job.as_uuid())
    .fetch_all(pool)
    .await
}

/// Announces a worker and what it can do (refreshed by its heartbeat).
pub async fn register_worker(
    pool: &PgPool,
    id: &str,
    host: &str,
    encoders: &[String],
    queues: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO workers (id, host, encoders, queues) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET encoders = $3, queues = $4, last_seen = now()",
    )
    .bind(id)
    .bind(host)
    .bind(encoders)
    .bind(queues)
    .execute(pool)
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use vtx_domain::{JobPlan, SliceWindow};

    use super::longest_first;

    #[test]
    fn slices_are_handed_out_longest_first() {
        let w = |index, start, end| SliceWindow { index, start, end };
        let plan = JobPlan {
            time_base: (1, 1000),
            frame_rate: (25, 1),
            rotation: 0,
            display_width: 640,
            display_height: 360,
            shown_start: 0,
            end: 20_000,
            frames: 500,
            duration_seconds: 20.0,
            has_audio: false,
            audio_lead: 0,
            slices: vec![
                w(0, 0, 4000),
                w(1, 4000, 10_000),
                w(2, 10_000, 14_000),
                w(3, 14_000, 20_000),
            ],
        };
        assert_eq!(longest_first(Some(&plan), 4), vec![1, 3, 0, 2]);
        assert_eq!(longest_first(None, 3), vec![0, 1, 2]);
    }
}
