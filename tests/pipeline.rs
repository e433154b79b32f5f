//! The distributed pipeline end to end: worker processes, slices spread over them, the tier
//! swap seen by a viewer, and a poison job's way to the dead-letter queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use sqlx::PgPool;
use vtx_domain::messages::queue;
use vtx_media::{Deadline, Limits, probe};
use vtx_tests::{ChildGuard, Services, TestApp, looped};

const WITHIN: Duration = Duration::from_secs(240);

/// (successful fetches, failed fetches, live tiers seen in order)
type Viewer = tokio::task::JoinHandle<(u64, u64, Vec<String>)>;

/// What a viewer does, over and over: read the playback, fetch the start of an MP4 and the HLS
/// master. Counts fetches that fail and remembers the tiers seen live.
fn start_viewer(app: &TestApp, video: vtx_domain::VideoId) -> (Arc<AtomicBool>, Viewer) {
    let stop = Arc::new(AtomicBool::new(false));
    let (client, flag) = (app.client.clone(), stop.clone());
    let handle = tokio::spawn(async move {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut tiers: Vec<String> = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Ok(v) = client.video(video).await
                && let Some(p) = v.playback
            {
                let tier = v.live_tier.unwrap_or_default();
                if tiers.last() != Some(&tier) {
                    tiers.push(tier);
                }
                // A live-ingest fast tier is HLS only until its MP4s are muxed.
                let mp4 = match p.mp4.first() {
                    Some(r) => Some(
                        client
                            .http()
                            .get(&r.url)
                            .header("Range", "bytes=0-4095")
                            .send()
                            .await,
                    ),
                    None => None,
                };
                let hls = client
                    .http()
                    .get(p.hls.as_deref().unwrap_or_default())
                    .send()
                    .await;
                let good = mp4.as_ref().is_none_or(
                    |m| matches!(m, Ok(r) if r.status() == StatusCode::PARTIAL_CONTENT),
                ) && matches!(&hls, Ok(r) if r.status() == StatusCode::OK);
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok.into_inner(), failed.into_inner(), tiers)
    });
    (stop, handle)
}

#[sqlx::test(migrations = "../migrations")]
async fn two_worker_processes_share_a_five_minute_clip_and_the_swap_never_breaks_a_fetch(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(
        pool,
        &[],
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let workers = [
        ChildGuard(app.spawn_worker_process("pipeline-a")),
        ChildGuard(app.spawn_worker_process("pipeline-b")),
    ];
    // The scheduler sizes slices by the workers consuming fast slices: wait for both.
    let broker = app.broker.get().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while broker.queue_stats(queue::FAST_SLICES).await.unwrap().1 < 2 {
        assert!(
            std::time::Instant::now() < until,
            "worker processes did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let clip = looped("carphone_pristine.mp4", 75);
    let source = probe(&clip, &Limits::default(), Deadline::none()).unwrap();
    assert!(
        source.video.duration_seconds >= 299.0,
        "{} s",
        source.video.duration_seconds
    );
    let done = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();

    let fast = app
        .client
        .wait_for_video(done.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(fast.state, "published");
    assert_eq!(fast.live_tier.as_deref(), Some("fast"));
    let (stop, viewer) = start_viewer(&app, done.video_id);
    let high = app
        .client
        .wait_for_tier(done.video_id, "high", WITHIN)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, seen) = viewer.await.unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} fetches failed around the swap",
        ok + failed
    );
    assert!(ok > 5);
    assert_eq!(seen.last().map(String::as_str), Some("high"), "{seen:?}");

    // Every frame of the published video, on every rendition.
    let dir = tempfile::tempdir().unwrap();
    for r in &high.playback.unwrap().mp4 {
        let path = dir.path().join(&r.name);
        app.client.download(&r.url, &path).await.unwrap();
        let got = probe(&path, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(got.video.frames, source.video.frames, "{}", r.name);
    }

    // The fast tier (the upload's chunks, encoded as they arrived) and the high tier's slices
    // were spread over both workers, and the fast tier was live before the high one began.
    let job = app.client.job(done.job_id).await.unwrap();
    let (fast_tier, high_tier) = (&job.tiers[0], &job.tiers[1]);
    assert!(
        fast_tier.slices_total >= 4 && high_tier.slices_total >= 4,
        "{} chunks, {} slices",
        fast_tier.slices_total,
        high_tier.slices_total
    );
    assert!(fast_tier.finished_at.as_deref().unwrap() <= high_tier.started_at.as_deref().unwrap());
    let chunks_by: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT DISTINCT c.encode_owner FROM upload_chunks c JOIN videos v ON v.upload_id = c.upload_id
         WHERE v.id = $1",
    )
    .bind(done.video_id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(chunks_by.len(), 2, "chunks went to {chunks_by:?}");
    let by: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT finished_by FROM slices WHERE job_id = $1 AND tier = 'high'",
    )
    .bind(done.job_id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(by.len(), 2, "slices went to {by:?}");
    drop(workers);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_poison_job_fails_with_a_code_lands_in_the_dead_letter_queue_and_others_flow(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(
        pool,
        // The sliced fast tier (whole-file and tus sources, and uploads not live-ingested).
        &[
            ("VTX_MAX_ATTEMPTS", "2"),
            ("VTX_TIERS", "fast"),
            ("VTX_LIVE_INGEST", "false"),
        ],
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    // Plan a job, then take away one of its slices: every attempt at it fails.
    let clip = looped("bikes.mp4", 2);
    let poison = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = app.client.job(poison.job_id).await.unwrap();
        if !job.tiers.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < until, "job never planned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.store
        .delete(&vtx_domain::keys::slice(poison.job_id, 0))
        .await
        .unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(app.worker.clone().run(app.broker.clone(), shutdown.clone()));
    let failed = app
        .client
        .wait_for_video(poison.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(failed.state, "failed");
    let job = app.client.job(poison.job_id).await.unwrap();
    assert_eq!(job.state, "failed");
    assert_eq!(job.error.as_ref().unwrap().code, "retries-exhausted");
    let attempts: (i32,) =
        sqlx::query_as("SELECT attempts FROM slices WHERE job_id = $1 AND idx = 0")
            .bind(poison.job_id.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts.0, 2, "bounded: the second failed attempt gives up");

    let broker = app.broker.get().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(t) = broker.get_one(queue::DEAD).await.unwrap() {
            break t;
        }
        assert!(
            std::time::Instant::now() < until,
            "nothing in the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.job_id(), Some(poison.job_id));

    // Other jobs keep flowing.
    let good = app
        .client
        .upload_file(
            &vtx_tests::media("bikes.mp4"),
            &Default::default(),
            &|_, _| {},
        )
        .await
        .unwrap();
    let v = app
        .client
        .wait_for_video(good.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(v.state, "published");
    shutdown.cancel();
    worker.await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn sigterm_lets_a_worker_finish_the_slice_in_hand_then_exit(pool: PgPool) {
    // High tier only: slices take a few seconds, long enough to be caught in hand.
    let settings = [("VTX_SLICE_SECONDS", "4"), ("VTX_TIERS", "high")];
    let app = TestApp::spawn_with(
        pool,
        &settings,
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let mut first = ChildGuard(app.spawn_worker_process("sigterm-a"));
    let clip = looped("bikes.mp4", 3);
    let frames = probe(&clip, &Limits::default(), Deadline::none())
        .unwrap()
        .video
        .frames;
    let done = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();

    let until = std::time::Instant::now() + WITHIN;
    let (owner, index) = loop {
        let row: Option<(String, i32)> = sqlx::query_as(
            "SELECT lease_owner, idx FROM slices WHERE job_id = $1 AND state = 'running' LIMIT 1",
        )
        .bind(done.job_id.as_uuid())
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        if let Some(r) = row {
            break r;
        }
        assert!(std::time::Instant::now() < until, "no slice ever ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(owner.contains(&format!("-{}-", first.0.id())));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());

    // It exits by itself, cleanly, having finished the slice it held.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = first.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < until,
            "worker did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let (state, by): (String, Option<String>) =
        sqlx::query_as("SELECT state, finished_by FROM slices WHERE job_id = $1 AND idx = $2")
            .bind(done.job_id.as_uuid())
            .bind(index)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), by.as_deref()),
        ("done", Some(owner.as_str()))
    );

    // Another worker takes the rest; nothing was lost.
    let _second = ChildGuard(app.spawn_worker_process("sigterm-b"));
    let v = app
        .client
        .wait_for_video(done.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(v.state, "published");
    let dir = tempfile::tempdir().unwrap();
    for r in &v.playback.unwrap().mp4 {
        let path = dir.path().join(&r.name);
        app.client.download(&r.url, &path).await.unwrap();
        assert_eq!(
            probe(&path, &Limits::default(), Deadline::none())
                .unwrap()
                .video
                .frames,
            frames
        );
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_merge_that_keeps_failing_gives_up_after_bounded_attempts_counted_durably(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        // The sliced fast tier (whole-file and tus sources, and uploads not live-ingested).
        &[
            ("VTX_MAX_ATTEMPTS", "2"),
            ("VTX_TIERS", "fast"),
            ("VTX_LIVE_INGEST", "false"),
        ],
        Services::default(),
    )
    .await;
    let done = app
        .client
        .upload_file(&vtx_tests::gop_bframes(), &Default::default(), &|_, _| {})
        .await
        .unwrap();
    // Once planned, the shared audio vanishes: every merge attempt fails.
    let until = std::time::Instant::now() + WITHIN;
    loop {
        let key: Option<String> = sqlx::query_scalar("SELECT audio_key FROM jobs WHERE id = $1")
            .bind(done.job_id.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if let Some(key) = key {
            app.store.delete(&key).await.unwrap();
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never planned with audio"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let video = app
        .client
        .wait_for_video(done.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(video.state, "failed", "{video:?}");
    assert_eq!(video.error.unwrap().code, "retries-exhausted");
    let attempts: i32 = sqlx::query_scalar(
        "SELECT merge_attempts FROM job_tiers WHERE job_id = $1 AND tier = 'fast'",
    )
    .bind(done.job_id.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        attempts, 2,
        "bounded by VTX_MAX_ATTEMPTS and counted in the database"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_consumes_only_the_classes_it_is_given(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_WORKER_QUEUES", "fast,merge")],
        Services::default(),
    )
    .await;
    assert_eq!(
        app.worker.queues(),
        vec![queue::FAST_SLICES, queue::FAST_MERGE, queue::MERGE]
    );
    let broker = app.broker.get().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while broker.queue_stats(queue::FAST_SLICES).await.unwrap().1 == 0 {
        assert!(
            std::time::Instant::now() < until,
            "the worker never consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.queue_stats(queue::HIGH_SLICES).await.unwrap().1, 0);
    assert_eq!(
        broker.queue_stats(queue::EXTREME_SLICES).await.unwrap().1,
        0
    );
    let registered: Vec<String> = sqlx::query_scalar("SELECT unnest(queues) FROM workers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        registered,
        vec![queue::FAST_SLICES, queue::FAST_MERGE, queue::MERGE]
    );
    // This machine's FFmpeg has libx265 and libsvtav1: by default the extreme class is served.
    assert!(vtx_media::can_encode_tier(vtx_media::Tier::Extreme));
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_chunk_encode_whose_worker_is_killed_is_redone(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_TIERS", "fast")],
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let mut first = ChildGuard(app.spawn_worker_process("chunk-a"));
    let clip = looped("bigbuckbunny.mp4", 2); // 720p, two 5.28 s GOPs: two chunks
    let source = probe(&clip, &Limits::default(), Deadline::none()).unwrap();
    let chunks = vtx_tests::ts_chunks(&clip, 2.0);
    assert_eq!(chunks.len(), 2);
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    c.put_chunk(up.id, 0, chunks[0].clone()).await.unwrap();

    // kill -9 the worker while it encodes chunk 0.
    let until = std::time::Instant::now() + WITHIN;
    loop {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT encode_state FROM upload_chunks WHERE upload_id = $1 AND idx = 0",
        )
        .bind(up.id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        match state.as_deref() {
            Some("running") => break,
            Some("done") => panic!("the chunk was encoded before the worker could be killed"),
            _ => {}
        }
        assert!(std::time::Instant::now() < until, "chunk 0 never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.0.kill().unwrap();
    let _ = first.0.wait();
    let _second = ChildGuard(app.spawn_worker_process("chunk-b"));
    c.put_chunk(up.id, 1, chunks[1].clone()).await.unwrap();
    let done = c.complete(up.id, Some(2)).await.unwrap();

    // The reaper hands the chunk back once its lease expires; the video is whole.
    let video = c.wait_for_video(done.video_id, WITHIN).await.unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(source.video.frames));
    let attempts: i32 = sqlx::query_scalar(
        "SELECT encode_attempts FROM upload_chunks WHERE upload_id = $1 AND idx = 0",
    )
    .bind(up.id.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(attempts >= 2, "{attempts} attempts");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_fast_task_beside_a_long_high_tier_encode_on_the_same_worker_does_not_wait_for_it(
    pool: PgPool,
) {
    // One worker process for every class, one task per class at a time; slices up to a minute,
    // so the first video's high tier is one long encode.
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_LIVE_INGEST", "false"),
            ("VTX_SLICE_SECONDS", "60"),
            ("VTX_MAX_SLICE_SECONDS", "60"),
        ],
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let _worker = ChildGuard(app.spawn_worker_process("fast-first"));
    let long = app
        .client
        .upload_file(&looped("bikes.mp4", 6), &Default::default(), &|_, _| {})
        .await
        .unwrap();
    // Its high-tier slice is encoding...
    let until = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (running,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM slices WHERE job_id = $1 AND tier = 'high' AND state = 'running'",
        )
        .bind(long.job_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if running > 0 {
            break;
        }
        assert!(std::time::Instant::now() < until, "no high-tier slice ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...when a new upload's fast work arrives on the same worker: it is published first.
    let short = app
        .client
        .upload_file(
            &vtx_tests::media("carphone_pristine.mp4"),
            &Default::default(),
            &|_, _| {},
        )
        .await
        .unwrap();
    app.client
        .wait_for_video(short.video_id, Duration::from_secs(240))
        .await
        .unwrap();
    app.client
        .wait_for_tier(long.video_id, "high", Duration::from_secs(600))
        .await
        .unwrap();
    let (published, high_done): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT (SELECT published_at FROM videos WHERE id = $1),
                    (SELECT max(finished_at) FROM slices WHERE job_id = $2 AND tier = 'high')",
        )
        .bind(short.video_id.as_uuid())
        .bind(long.job_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        published < high_done,
        "the new video waited for the high-tier encode: published {published}, high slice done {high_done}"
    );
    app.stop().await;
}
