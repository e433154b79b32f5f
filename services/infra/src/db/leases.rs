//! Leases whose worker vanished are handed back; merges that never finish fail their job.

use std::time::Duration;

use sqlx::postgres::PgPool;
use uuid::Uuid;
use vtx_domain::{ErrorCode, JobId, Task, Tier};

use super::*;
use crate::outbox;

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
