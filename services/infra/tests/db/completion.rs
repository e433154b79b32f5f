//! Completion tracking on the real PostgreSQL: exactly one merge per (job, tier) whatever the
//! concurrency and duplicates, and leases that only an expired or own claim can take over.

use std::time::Duration;

use sqlx::PgPool;
use vtx_domain::{JobId, JobPlan, SliceWindow, Tier, VideoId};
use vtx_infra::db::{self, SliceDone};

async fn planned_job(pool: &PgPool, slices: u32) -> JobId {
    let (video, job) = (VideoId::new(), JobId::new());
    sqlx::query("INSERT INTO videos (id, state, source_key, source_bytes) VALUES ($1, 'processing', 'k', 1)")
        .bind(video.as_uuid())
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (id, video_id, state) VALUES ($1, $2, 'queued')")
        .bind(job.as_uuid())
        .bind(video.as_uuid())
        .execute(pool)
        .await
        .unwrap();
    let plan = JobPlan {
        time_base: (1, 1000),
        frame_rate: (25, 1),
        rotation: 0,
        display_width: 640,
        display_height: 360,
        shown_start: 0,
        end: i64::from(slices) * 1000,
        frames: u64::from(slices) * 25,
        duration_seconds: f64::from(slices),
        has_audio: false,
        audio_lead: 0,
        ladder: Default::default(),
        profile: None,
        psychovisual: None,
        slices: (0..slices)
            .map(|i| SliceWindow {
                index: i,
                start: i64::from(i) * 1000,
                end: i64::from(i + 1) * 1000,
            })
            .collect(),
    };
    assert!(
        db::record_plan(pool, job, &plan, None, 0, &[Tier::Fast, Tier::High], None)
            .await
            .unwrap()
    );
    assert!(
        !db::record_plan(pool, job, &plan, None, 0, &[Tier::Fast], None)
            .await
            .unwrap(),
        "planned once"
    );
    job
}

async fn merges_queued(pool: &PgPool, job: JobId) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE payload->>'type' = 'merge' AND payload->>'job_id' = $1",
    )
    .bind(job.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_and_duplicate_completions_queue_exactly_one_merge(pool: PgPool) {
    let n = 12;
    let job = planned_job(&pool, n).await;
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE payload->>'type' = 'encode_slice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, i64::from(n), "only the first tier is queued");
    for i in 0..n {
        let ctx = db::claim_slice(&pool, job, Tier::Fast, i, "w", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(ctx.unwrap().attempts, 1);
    }
    // Every slice completed twice, all at once.
    let mut set = tokio::task::JoinSet::new();
    for i in (0..n).chain(0..n) {
        let pool = pool.clone();
        set.spawn(async move {
            db::complete_slice(&pool, job, Tier::Fast, i, "w", 0)
                .await
                .unwrap()
        });
    }
    let mut counted = 0;
    let mut merge_flags = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            SliceDone::Counted { merge_queued } => {
                counted += 1;
                merge_flags += usize::from(merge_queued);
            }
            SliceDone::Duplicate => {}
        }
    }
    assert_eq!(counted, n, "each slice counted once");
    assert_eq!(merge_flags, 1);
    assert_eq!(merges_queued(&pool, job).await, 1);
    let tier = &db::tiers_of_job(&pool, job).await.unwrap()[0];
    assert_eq!(
        (tier.state.as_str(), tier.slices_done),
        ("merging", n as i32)
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_live_lease_cannot_be_taken_but_an_expired_one_can(pool: PgPool) {
    let job = planned_job(&pool, 1).await;
    let short = Duration::from_millis(300);
    assert!(
        db::claim_slice(&pool, job, Tier::Fast, 0, "a", short)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        db::claim_slice(&pool, job, Tier::Fast, 0, "b", short)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    // The holder may claim again (a retry in place), counting an attempt.
    assert_eq!(
        db::claim_slice(&pool, job, Tier::Fast, 0, "a", short)
            .await
            .unwrap()
            .unwrap()
            .attempts,
        2
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired: the reaper re-queues it, and another worker takes it.
    assert_eq!(db::reap_expired_leases(&pool).await.unwrap(), 1);
    let taken = db::claim_slice(&pool, job, Tier::Fast, 0, "b", short)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.attempts, 3);
    assert!(
        !db::heartbeat_slice(&pool, job, Tier::Fast, 0, "a", short)
            .await
            .unwrap(),
        "a lost it"
    );
    assert!(
        db::heartbeat_slice(&pool, job, Tier::Fast, 0, "b", short)
            .await
            .unwrap()
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_merge_that_never_finishes_fails_its_job_instead_of_hanging(pool: PgPool) {
    let job = planned_job(&pool, 1).await;
    db::claim_slice(&pool, job, Tier::Fast, 0, "w", Duration::from_secs(30))
        .await
        .unwrap();
    db::complete_slice(&pool, job, Tier::Fast, 0, "w", 0)
        .await
        .unwrap();
    assert!(
        db::fail_stale_merges(&pool, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "recent: left alone"
    );
    sqlx::query("UPDATE job_tiers SET encoded_at = now() - interval '2 hours' WHERE job_id = $1")
        .bind(job.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        db::fail_stale_merges(&pool, Duration::from_secs(60))
            .await
            .unwrap(),
        vec![job]
    );
    let (state, code): (String, Option<String>) =
        sqlx::query_as("SELECT state, error_code FROM jobs WHERE id = $1")
            .bind(job.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), code.as_deref()),
        ("failed", Some("retries-exhausted"))
    );
    assert!(
        db::claim_merge(&pool, job, Tier::Fast)
            .await
            .unwrap()
            .is_none(),
        "a late merge finds nothing to do"
    );
}
