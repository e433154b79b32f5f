//! How long the oldest waiting task of each work queue has waited (`vtx_queue_oldest_seconds`):
//! RabbitMQ does not say how old a queue's head is, and peeking would count a delivery, so
//! it is read from the rows the messages stand for.

use std::time::Duration;

use sqlx::postgres::PgPool;
use vtx_domain::messages::queue;
use vtx_domain::{ChunkEncodeState, JobState, Lifecycle, SliceState, Tier, TierState, UploadState};

/// (queue, age of its oldest waiting task) for the five work queues; zero when none waits.
/// A queued slice waits since its tier started encoding (when its messages went out); a chunk
/// encode since its chunk arrived (while its upload is open); a merge since its tier's last
/// slice was done. Work of ended jobs (a failed job leaves its slices queued) does not count;
/// a merge being run still counts until it ends (known limit).
pub async fn oldest_waiting(pool: &PgPool) -> sqlx::Result<Vec<(&'static str, Duration)>> {
    let slices: Vec<(String, f64)> = sqlx::query_as(
        "SELECT s.tier, COALESCE(EXTRACT(EPOCH FROM now() - min(t.started_at)), 0)::float8
         FROM slices s JOIN job_tiers t ON t.job_id = s.job_id AND t.tier = s.tier
         JOIN jobs j ON j.id = s.job_id
         WHERE s.state = $1 AND t.state = $2 AND NOT (j.state = ANY($3)) GROUP BY s.tier",
    )
    .bind(SliceState::Queued)
    .bind(TierState::Encoding)
    .bind(JobState::terminal())
    .fetch_all(pool)
    .await?;
    let chunks: f64 = sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(c.created_at)), 0)::float8
         FROM upload_chunks c JOIN uploads u ON u.id = c.upload_id
         WHERE c.encode_state = $1 AND u.state = $2",
    )
    .bind(ChunkEncodeState::Queued)
    .bind(UploadState::Open)
    .fetch_one(pool)
    .await?;
    let merges: Vec<(bool, f64)> = sqlx::query_as(
        "SELECT t.tier = $3,
                COALESCE(EXTRACT(EPOCH FROM now() - min(COALESCE(t.encoded_at, t.started_at))), 0)::float8
         FROM job_tiers t JOIN jobs j ON j.id = t.job_id
         WHERE t.state = $1 AND NOT (j.state = ANY($2)) GROUP BY 1",
    )
    .bind(TierState::Merging)
    .bind(JobState::terminal())
    .bind(Tier::Fast)
    .fetch_all(pool)
    .await?;
    let merge_age = |fast: bool| {
        merges
            .iter()
            .find(|(f, _)| *f == fast)
            .map_or(0.0, |(_, age)| *age)
    };
    let slice_age = |tier: Tier| {
        slices
            .iter()
            .find(|(t, _)| t == tier.as_str())
            .map_or(0.0, |(_, age)| *age)
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    Ok(vec![
        (queue::FAST_SLICES, secs(slice_age(Tier::Fast).max(chunks))),
        (queue::HIGH_SLICES, secs(slice_age(Tier::High))),
        (queue::EXTREME_SLICES, secs(slice_age(Tier::Extreme))),
        (queue::FAST_MERGE, secs(merge_age(true))),
        (queue::MERGE, secs(merge_age(false))),
    ])
}
