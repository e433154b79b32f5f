//! A/B experiments: their arms, the videos assigned when their jobs were planned, what players
//! report about plays, and the aggregates a report reads.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use uuid::Uuid;
use vtx_domain::VideoId;
use vtx_domain::experiments::{Arm, EncoderProfile, Unit, assign};

#[derive(Clone, Debug, FromRow)]
pub struct ExperimentRow {
    pub id: Uuid,
    pub name: String,
    pub unit: String,
    pub arms: Json<Vec<Arm>>,
    pub effective_play_seconds: f64,
    pub state: String,
    pub winner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

impl ExperimentRow {
    pub fn unit(&self) -> Unit {
        Unit::parse(&self.unit).unwrap_or(Unit::Video)
    }

    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// The arm `key` belongs to.
    pub fn arm_of(&self, key: &str) -> &Arm {
        &self.arms.0[assign(self.id, key, &self.arms.0)]
    }
}

const COLUMNS: &str =
    "id, name, unit, arms, effective_play_seconds, state, winner, created_at, stopped_at";

/// Creates a running experiment; `None` when one already runs for the same unit.
pub async fn create_experiment(
    pool: &PgPool,
    name: &str,
    unit: Unit,
    arms: &[Arm],
    effective_play_seconds: f64,
) -> sqlx::Result<Option<ExperimentRow>> {
    let row = sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO experiments (id, name, unit, arms, effective_play_seconds)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (unit) WHERE state = 'running' DO NOTHING
         RETURNING {COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(unit.as_str())
    .bind(Json(arms))
    .bind(effective_play_seconds)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

pub async fn experiment(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ExperimentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM experiments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn running_experiment(pool: &PgPool, unit: Unit) -> sqlx::Result<Option<ExperimentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM experiments WHERE unit = $1 AND state = 'running'"
    )))
    .bind(unit.as_str())
    .fetch_optional(pool)
    .await
}

/// Stops a running experiment, keeping `winner`; `None` when it was not running.
pub async fn stop_experiment(
    pool: &PgPool,
    id: Uuid,
    winner: &str,
) -> sqlx::Result<Option<ExperimentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE experiments SET state = 'stopped', winner = $2, stopped_at = now()
         WHERE id = $1 AND state = 'running' RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(winner)
    .fetch_optional(pool)
    .await
}

/// The encoder profile a video's job gets: its arm's in the running video experiment (with
/// the arm, to record), else the winner's of the last stopped one, else none (the workers'
/// settings). Only a new video (`enrol`) joins the running experiment; a later job of an
/// older video (an extreme re-encode) keeps the arm it was given, or stays out.
pub async fn profile_for(
    pool: &PgPool,
    video: VideoId,
    enrol: bool,
) -> sqlx::Result<(EncoderProfile, Option<(Uuid, String)>)> {
    if let Some(e) = running_experiment(pool, Unit::Video).await? {
        let enrolled = enrol || !video_arms(pool, e.id, &[video.as_uuid()]).await?.is_empty();
        if enrolled {
            let arm = e.arm_of(&video.to_string());
            return Ok((arm.encoder_profile(), Some((e.id, arm.name.clone()))));
        }
    }
    let kept: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM experiments WHERE unit = 'video' AND state = 'stopped'
         ORDER BY stopped_at DESC LIMIT 1"
    )))
    .fetch_optional(pool)
    .await?;
    Ok((
        kept.and_then(|e| {
            let w = e.winner.clone()?;
            e.arms
                .0
                .iter()
                .find(|a| a.name == w)
                .map(Arm::encoder_profile)
        })
        .unwrap_or_default(),
        None,
    ))
}

/// Records that `video` was encoded as `arm` of `experiment` (once; a replanned job keeps it).
pub async fn assign_video(
    db: impl sqlx::PgExecutor<'_>,
    experiment: Uuid,
    video: VideoId,
    arm: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO experiment_videos (experiment_id, video_id, arm) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(experiment)
    .bind(video.as_uuid())
    .bind(arm)
    .execute(db)
    .await?;
    Ok(())
}

/// The arms `videos` were assigned to in `experiment` (those assigned at all).
pub async fn video_arms(
    pool: &PgPool,
    experiment: Uuid,
    videos: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT video_id, arm FROM experiment_videos
         WHERE experiment_id = $1 AND video_id = ANY($2)",
    )
    .bind(experiment)
    .bind(videos)
    .fetch_all(pool)
    .await
}

/// One play as a player reported it, attributed to an arm.
pub struct PlaybackRow {
    pub experiment: Uuid,
    pub arm: String,
    pub video: Uuid,
    pub play_id: Option<String>,
    pub first_frame_ms: Option<i32>,
    pub stalls: i32,
    pub failed: bool,
    pub watched_seconds: f64,
    pub bytes: i64,
}

/// Adds the reports not already there (by `play_id`); how many were added.
pub async fn add_playback_reports(pool: &PgPool, rows: &[PlaybackRow]) -> sqlx::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let added = sqlx::query(
        "INSERT INTO playback_reports
             (experiment_id, arm, video_id, first_frame_ms, stalls, failed, watched_seconds, bytes,
              play_id)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::int[],
                              $6::bool[], $7::float8[], $8::int8[], $9::text[])
         ON CONFLICT (experiment_id, play_id) WHERE play_id IS NOT NULL DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.experiment).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.arm.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.video).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.first_frame_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.stalls).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.failed).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.watched_seconds).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.play_id.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(added.rows_affected())
}

/// One arm's play aggregates.
#[derive(Clone, Debug, Default, FromRow)]
pub struct ArmPlays {
    pub arm: String,
    pub plays: i64,
    pub failed: i64,
    pub effective: i64,
    pub bytes_sum: f64,
    pub bytes_squares: f64,
    pub stalls: i64,
    pub first_frames: i64,
}

pub async fn arm_plays(
    pool: &PgPool,
    experiment: Uuid,
    effective_play_seconds: f64,
) -> sqlx::Result<Vec<ArmPlays>> {
    sqlx::query_as(
        "SELECT arm, count(*) AS plays,
                count(*) FILTER (WHERE failed) AS failed,
                count(*) FILTER (WHERE NOT failed AND watched_seconds >= $2) AS effective,
                coalesce(sum(bytes::float8), 0) AS bytes_sum,
                coalesce(sum(bytes::float8 * bytes::float8), 0) AS bytes_squares,
                coalesce(sum(stalls), 0)::int8 AS stalls,
                count(first_frame_ms) AS first_frames
         FROM playback_reports WHERE experiment_id = $1 GROUP BY arm",
    )
    .bind(experiment)
    .bind(effective_play_seconds)
    .fetch_all(pool)
    .await
}

/// First-frame latencies (ms) of an arm's plays at the given 1-based ranks, in ascending order.
pub async fn first_frame_at_ranks(
    pool: &PgPool,
    experiment: Uuid,
    arm: &str,
    ranks: &[i64],
) -> sqlx::Result<Vec<(i64, f64)>> {
    sqlx::query_as(
        "SELECT rank, ms::float8 FROM (
             SELECT first_frame_ms AS ms,
                    row_number() OVER (ORDER BY first_frame_ms) AS rank
             FROM playback_reports
             WHERE experiment_id = $1 AND arm = $2 AND first_frame_ms IS NOT NULL
         ) ranked WHERE rank = ANY($3)",
    )
    .bind(experiment)
    .bind(arm)
    .bind(ranks)
    .fetch_all(pool)
    .await
}

/// Per arm: videos assigned, and the mean over those videos of their measured high and extreme
/// renditions' PSNR and SSIM (the tiers an encoder profile changes; each video counts once).
pub async fn arm_quality(
    pool: &PgPool,
    experiment: Uuid,
) -> sqlx::Result<Vec<(String, i64, Option<f64>, Option<f64>)>> {
    sqlx::query_as(
        "SELECT arm, count(*), avg(psnr), avg(ssim) FROM (
             SELECT e.arm, e.video_id, avg(r.psnr) AS psnr, avg(r.ssim) AS ssim
             FROM experiment_videos e
             LEFT JOIN renditions r ON r.video_id = e.video_id
                  AND r.tier IN ('high', 'extreme') AND r.container = 'mp4'
             WHERE e.experiment_id = $1 GROUP BY e.arm, e.video_id
         ) per_video GROUP BY arm",
    )
    .bind(experiment)
    .fetch_all(pool)
    .await
}
