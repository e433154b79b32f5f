//! Experiments on the real PostgreSQL: who joins a running video experiment, and retried
//! playback reports.

use sqlx::PgPool;
use vtx_domain::VideoId;
use vtx_domain::experiments::{Arm, Unit};
use vtx_infra::db::experiments as db;

fn arm(name: &str, psychovisual: bool) -> Arm {
    Arm {
        name: name.into(),
        weight: 1,
        quality_target: None,
        psychovisual: Some(psychovisual),
        max_height: None,
    }
}

/// A running video experiment: psychovisual tuning off against on.
async fn psy_experiment(pool: &PgPool) -> db::ExperimentRow {
    db::create_experiment(
        pool,
        "psy",
        Unit::Video,
        &[arm("off", false), arm("on", true)],
        3.0,
    )
    .await
    .unwrap()
    .expect("no experiment was running")
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_new_videos_join_a_running_video_experiment(pool: PgPool) {
    let e = psy_experiment(&pool).await;
    let (old, new) = (VideoId::new(), VideoId::new());
    // An older video's extreme re-encode stays out, with the workers' settings.
    let (profile, joined) = db::profile_for(&pool, old, false).await.unwrap();
    assert_eq!((profile.psychovisual, joined), (None, None));
    // A new video joins, in the arm its id hashes to, and keeps it for its later jobs.
    let (profile, joined) = db::profile_for(&pool, new, true).await.unwrap();
    let (experiment, name) = joined.expect("a new video joins");
    assert_eq!(experiment, e.id);
    assert_eq!(profile.psychovisual, Some(name == "on"));
    db::assign_video(&pool, experiment, new, &name)
        .await
        .unwrap();
    let (again, joined) = db::profile_for(&pool, new, false).await.unwrap();
    assert_eq!((again, joined), (profile, Some((e.id, name))));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_retried_playback_report_counts_once(pool: PgPool) {
    let e = psy_experiment(&pool).await;
    let row = |play_id: Option<&str>| db::PlaybackRow {
        experiment: e.id,
        arm: "off".into(),
        video: VideoId::new().as_uuid(),
        play_id: play_id.map(String::from),
        first_frame_ms: Some(200),
        stalls: 0,
        failed: false,
        watched_seconds: 5.0,
        bytes: 1000,
    };
    let first = [row(Some("a")), row(Some("b")), row(None)];
    assert_eq!(db::add_playback_reports(&pool, &first).await.unwrap(), 3);
    // The same plays again (a retry), one new, and one without an id (always counted).
    let retry = [row(Some("a")), row(Some("b")), row(Some("c")), row(None)];
    assert_eq!(db::add_playback_reports(&pool, &retry).await.unwrap(), 2);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM playback_reports")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 5);
}
