//! Leases whose worker vanished are handed back (slices and chunk encodes); merges that never
//! finish fail their job.

use std::time::Duration;

use sqlx::postgres::PgPool;
use uuid::Uuid;
use vtx_domain::{ChunkEncodeState, ErrorCode, JobId, SliceState, Task, Tier, TierState, UploadId};

use super::*;
use crate::outbox;

/// Puts slices whose lease expired (their worker vanished) back in the queue. Returns how many.
pub async fn reap_expired_leases(pool: &PgPool) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, Tier, i32)> = sqlx::query_as(
        "UPDATE slices s SET state = $1, lease_owner = NULL, lease_expires_at = NULL
         FROM job_tiers t
         WHERE s.state = ANY($2) AND s.lease_expires_at < now()
           AND t.job_id = s.job_id AND t.tier = s.tier AND t.state = $3
         RETURNING s.job_id, s.tier, s.idx",
    )
    .bind_move(move_to(SliceState::Queued))
    .bind(TierState::Encoding)
    .fetch_all(&mut *tx)
    .await?;
    for (job, tier, idx) in &rows {
        let task = Task::EncodeSlice {
            job_id: JobId::from_uuid(*job),
            tier: *tier,
            index: *idx as u32,
        };
        outbox::enqueue(&mut tx, &task).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Fails tiers that have waited for their merge longer than `older_than`: a merge that kept
/// killing its worker ends in the dead-letter queue, and its tier would otherwise stay `merging`
/// for ever. Returns the jobs failed.
pub async fn fail_stale_merges(pool: &PgPool, older_than: Duration) -> sqlx::Result<Vec<JobId>> {
    let mut tx = pool.begin().await?;
    let stale: Vec<(Uuid, Tier)> = sqlx::query_as(
        "UPDATE job_tiers SET state = $3, error_code = $1, finished_at = now(),
                error_message = 'the merge did not finish in time'
         WHERE state = ANY($4) AND state = $5 AND encoded_at < now() - make_interval(secs => $2)
         RETURNING job_id, tier",
    )
    .bind(ErrorCode::RetriesExhausted.as_str())
    .bind(secs(older_than))
    .bind_move(move_to(TierState::Failed))
    .bind(TierState::Merging)
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

/// Re-queues chunk encodes whose lease expired (their worker vanished). Returns how many.
pub async fn reap_expired_chunk_encodes(pool: &PgPool) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE upload_chunks SET encode_state = $1, encode_owner = NULL, encode_lease_until = NULL
         WHERE encode_state = ANY($2) AND encode_state = $3 AND encode_lease_until < now()
         RETURNING upload_id, idx",
    )
    .bind_move(move_to(ChunkEncodeState::Queued))
    .bind(ChunkEncodeState::Running)
    .fetch_all(&mut *tx)
    .await?;
    for (upload, idx) in &rows {
        outbox::enqueue(
            &mut tx,
            &Task::EncodeChunk {
                upload_id: UploadId::from_uuid(*upload),
                index: *idx as u32,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}
