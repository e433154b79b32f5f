//! A job's plan: its source, planning attempts, the recorded plan and the slices it queues.

use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;
use vtx_domain::{
    ExtremeState, JobId, JobKind, JobPlan, JobState, SliceState, Task, Tier, TierState, VideoId,
};

use super::{BindMove, move_to};

use crate::outbox;

/// A job's source: its video, state, source object and the rotation its upload declared.
pub struct JobSource {
    pub video: VideoId,
    pub state: JobState,
    pub source_key: String,
    pub declared_rotation: Option<u32>,
    /// An upload's job, or an extreme job (its only tier is extreme).
    pub kind: JobKind,
}

pub async fn job_source(pool: &PgPool, job: JobId) -> sqlx::Result<Option<JobSource>> {
    let row: Option<(Uuid, JobState, String, Option<i32>, JobKind)> = sqlx::query_as(
        "SELECT j.video_id, j.state, v.source_key, u.rotation, j.kind FROM jobs j
         JOIN videos v ON v.id = j.video_id LEFT JOIN uploads u ON u.id = v.upload_id
         WHERE j.id = $1",
    )
    .bind(job.as_uuid())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(v, state, key, rotation, kind)| JobSource {
        video: VideoId::from_uuid(v),
        state,
        source_key: key,
        declared_rotation: rotation.map(|r| r as u32),
        kind,
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
    assignment: Option<(Uuid, VideoId, &str)>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE jobs SET state = $2, scheduled_at = now(), plan = $4, audio_key = $5, updated_at = now(),
                         concealed_audio_frames = $6
         WHERE id = $1 AND state = ANY($3)",
    )
    .bind(job.as_uuid())
    .bind_move(move_to(JobState::Scheduled))
    .bind(Json(plan))
    .bind(audio_key)
    .bind(concealed_audio_frames as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    // The video's experiment arm is recorded with the plan that carries its profile.
    if let Some((experiment, video, arm)) = assignment {
        super::experiments::assign_video(&mut *tx, experiment, video, arm).await?;
    }
    sqlx::query("UPDATE extreme_requests SET state = $2 WHERE job_id = $1 AND state = ANY($3)")
        .bind(job.as_uuid())
        .bind_move(move_to(ExtremeState::Encoding))
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
        .bind(SliceState::Queued)
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
pub(crate) fn longest_first(plan: Option<&JobPlan>, n: u32) -> Vec<u32> {
    match plan.filter(|p| p.slices.len() == n as usize) {
        Some(p) => vtx_domain::slicing::longest_first(&p.slices)
            .into_iter()
            .map(|i| p.slices[i].index)
            .collect(),
        None => (0..n).collect(),
    }
}

pub(crate) async fn enqueue_slices(
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
            ladder: Default::default(),
            profile: None,
            psychovisual: None,
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
