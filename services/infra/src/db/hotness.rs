//! Hotness: per-minute play counters, the top videos over a window, and extreme-encode requests
//! (one per video, whichever way it was picked).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use uuid::Uuid;
use vtx_domain::{
    ChunkEncodeState, ExtremeState, JobId, JobKind, JobState, SliceState, Task, Tier, VideoId,
    VideoState, keys,
};

use super::tiers::{NewRendition, finish_merging_tier, insert_renditions};
use super::{BindMove, move_to};

use crate::outbox;

/// Adds play counts (video, minute, plays) in batched upserts: a flood of plays costs one
/// statement per few thousand (video, minute) pairs.
pub async fn add_plays(pool: &PgPool, rows: &[(Uuid, DateTime<Utc>, i64)]) -> sqlx::Result<()> {
    // One transaction for the whole flush: a flush that fails half-way adds nothing, so the
    // gateway can keep its counters and retry without counting any play twice.
    let mut tx = pool.begin().await?;
    for batch in rows.chunks(5000) {
        let (ids, minutes, plays): (Vec<Uuid>, Vec<DateTime<Utc>>, Vec<i64>) = batch.iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut a, mut b, mut c), (id, m, n)| {
                a.push(*id);
                b.push(*m);
                c.push(*n);
                (a, b, c)
            },
        );
        sqlx::query(
            "INSERT INTO play_counts (video_id, minute, plays)
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bigint[])
             ON CONFLICT (video_id, minute) DO UPDATE SET plays = play_counts.plays + EXCLUDED.plays",
        )
        .bind(&ids)
        .bind(&minutes)
        .bind(&plays)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Moves per-minute counters of hours that ended more than `after` ago into per-hour ones,
/// and drops counters older than `keep` (nothing reads beyond the widest window). Returns
/// (minute rows moved, rows dropped). Plays flushed late for a moved hour land in a new
/// minute row, which the next roll-up moves; no play is counted twice.
pub async fn roll_up_plays(
    pool: &PgPool,
    after: Duration,
    keep: Duration,
) -> sqlx::Result<(u64, u64)> {
    let mut tx = pool.begin().await?;
    let moved: (i64,) = sqlx::query_as(
        "WITH moved AS (
             DELETE FROM play_counts
             WHERE minute < date_trunc('hour', now() - make_interval(secs => $1))
             RETURNING video_id, minute, plays
         ), hourly AS (
             INSERT INTO play_counts_hourly (video_id, hour, plays)
             SELECT video_id, date_trunc('hour', minute), sum(plays)::bigint FROM moved
             GROUP BY 1, 2
             ON CONFLICT (video_id, hour)
             DO UPDATE SET plays = play_counts_hourly.plays + EXCLUDED.plays
         )
         SELECT count(*) FROM moved",
    )
    .bind(after.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    let dropped = sqlx::query(
        "DELETE FROM play_counts_hourly
         WHERE hour < now() - make_interval(secs => $1) - interval '1 hour'",
    )
    .bind(keep.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok((moved.0.max(0) as u64, dropped))
}

/// Which of `ids` are published videos (plays of anything else are refused).
pub async fn published_among(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<HashSet<Uuid>> {
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM videos WHERE id = ANY($1) AND state = $2")
            .bind(ids)
            .bind(VideoState::Published)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A video among the most played, with the state of its extreme encode if requested.
#[derive(Clone, Debug)]
pub struct Hot {
    pub video: VideoId,
    pub plays: i64,
    pub extreme: Option<ExtremeState>,
}

/// The `limit` most played videos over the last `window`: whole minutes, and whole hours where
/// the plays were rolled up (an hour that overlaps the window's start counts whole).
pub async fn top_videos(pool: &PgPool, window: Duration, limit: u32) -> sqlx::Result<Vec<Hot>> {
    let rows: Vec<(Uuid, i64, Option<ExtremeState>)> = sqlx::query_as(
        "SELECT p.video_id, p.plays, e.state FROM (
             SELECT video_id, sum(plays)::bigint AS plays FROM (
                 SELECT video_id, plays FROM play_counts
                 WHERE minute >= date_trunc('minute', now() - make_interval(secs => $1))
                 UNION ALL
                 SELECT video_id, plays FROM play_counts_hourly
                 WHERE hour > date_trunc('minute', now() - make_interval(secs => $1))
                              - interval '1 hour'
             ) u
             GROUP BY video_id ORDER BY plays DESC, video_id LIMIT $2
         ) p LEFT JOIN extreme_requests e ON e.video_id = p.video_id
         ORDER BY p.plays DESC, p.video_id",
    )
    .bind(window.as_secs_f64())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(v, plays, extreme)| Hot {
            video: VideoId::from_uuid(v),
            plays,
            extreme,
        })
        .collect())
}

/// Why a video gets an extreme encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtremeReason {
    /// Among the top x by plays over the window.
    Hot,
    /// Its uploader's follower count predicted it.
    Followers,
}

impl ExtremeReason {
    fn as_str(self) -> &'static str {
        match self {
            ExtremeReason::Hot => "hot",
            ExtremeReason::Followers => "followers",
        }
    }
}

/// Requests an extreme encode of a published video whose high tier is live, once: the request
/// and a job of kind `extreme` (announced through the outbox) in one transaction. False when
/// the video already has one, or is not (yet) eligible.
pub async fn request_extreme(
    pool: &PgPool,
    video: VideoId,
    reason: ExtremeReason,
    score: i64,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let job = JobId::new();
    let inserted = sqlx::query(
        "INSERT INTO extreme_requests (video_id, reason, score, job_id)
         SELECT v.id, $2, $3, NULL FROM videos v
         WHERE v.id = $1 AND v.state = $4 AND v.live_tier = $5
         ON CONFLICT (video_id) DO NOTHING",
    )
    .bind(video.as_uuid())
    .bind(reason.as_str())
    .bind(score)
    .bind(VideoState::Published)
    .bind(Tier::High)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO jobs (id, video_id, state, kind) VALUES ($1, $2, $3, $4)")
        .bind(job.as_uuid())
        .bind(video.as_uuid())
        .bind(JobState::Queued)
        .bind(JobKind::Extreme)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE extreme_requests SET job_id = $2 WHERE video_id = $1")
        .bind(video.as_uuid())
        .bind(job.as_uuid())
        .execute(&mut *tx)
        .await?;
    outbox::enqueue(&mut tx, &Task::JobCreated { job_id: job }).await?;
    tx.commit().await?;
    Ok(true)
}

/// Published videos whose uploader has at least `threshold` followers, whose high tier is live
/// and which have no extreme request yet (the prediction at publish, and the sweep that makes
/// it survive a crash between publishing and requesting).
pub async fn followed_without_extreme(
    pool: &PgPool,
    threshold: u64,
    video: Option<VideoId>,
) -> sqlx::Result<Vec<(VideoId, i64)>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT v.id, u.followers FROM videos v JOIN uploads u ON u.id = v.upload_id
         WHERE u.followers >= $1 AND v.state = $3 AND v.live_tier = $4
           AND ($2::uuid IS NULL OR v.id = $2)
           AND NOT EXISTS (SELECT 1 FROM extreme_requests e WHERE e.video_id = v.id)
         LIMIT 100",
    )
    .bind(threshold.min(i64::MAX as u64) as i64)
    .bind(video.map(|v| v.as_uuid()))
    .bind(VideoState::Published)
    .bind(Tier::High)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(v, f)| (VideoId::from_uuid(v), f))
        .collect())
}

/// Extreme requests by state (for metrics).
pub async fn extreme_counts(pool: &PgPool) -> sqlx::Result<Vec<(ExtremeState, i64)>> {
    sqlx::query_as("SELECT state, count(*)::bigint FROM extreme_requests GROUP BY state")
        .fetch_all(pool)
        .await
}

/// Tasks running now on the fast and high tiers (slices under a lease, chunk encodes).
pub async fn running_tasks(pool: &PgPool) -> sqlx::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM slices WHERE state = $1 AND tier = ANY($2))
              + (SELECT count(*) FROM upload_chunks WHERE encode_state = $3)",
    )
    .bind(SliceState::Running)
    .bind(vec![Tier::Fast, Tier::High])
    .bind(ChunkEncodeState::Running)
    .fetch_one(pool)
    .await?;
    Ok(n.max(0) as u64)
}

/// Ends an extreme job: its accepted renditions are recorded beside the live ones, the request
/// says `added` (or `rejected` when none was) with the verdicts, and the job succeeds. False
/// when the tier was no longer waiting for this (a duplicate delivery).
pub async fn finish_extreme(
    pool: &PgPool,
    job: JobId,
    video: VideoId,
    accepted: &[NewRendition],
    verdicts: &serde_json::Value,
    hls_masters: &std::collections::BTreeMap<String, String>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    if !finish_merging_tier(&mut tx, job, Tier::Extreme).await? {
        return Ok(false);
    }
    insert_renditions(&mut tx, video, job, Tier::Extreme, accepted).await?;
    super::succeed_job(&mut tx, job).await?;
    if !accepted.is_empty() {
        let event = vtx_domain::webhooks::EventType::VideoExtremeAdded;
        super::webhooks::record_event(&mut tx, event, Some(video), None).await?;
    }
    sqlx::query(
        "UPDATE extreme_requests SET state = $2, result = $4, hls_masters = $5, finished_at = now()
         WHERE job_id = $1 AND state = ANY($3)",
    )
    .bind(job.as_uuid())
    .bind_move(move_to(if accepted.is_empty() {
        ExtremeState::Rejected
    } else {
        ExtremeState::Added
    }))
    .bind(sqlx::types::Json(verdicts))
    .bind(sqlx::types::Json(hls_masters))
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO garbage (prefix, delete_after) VALUES ($1, now())")
        .bind(keys::work(job))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}
