//! End-to-end: real PostgreSQL, RabbitMQ, S3 server and FFmpeg, no mocks.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use sqlx::PgPool;
use vtx_client::ApiFailure;
use vtx_domain::{Task, Tier};
use vtx_infra::broker::Outcome;
use vtx_media::{Deadline, Limits, probe};
use vtx_tests::{TestApp, gop_bframes, media, ts_chunks};

const READY_WITHIN: Duration = Duration::from_secs(60);

fn failure(e: anyhow::Error) -> ApiFailure {
    e.downcast::<ApiFailure>().expect("an API error response")
}

#[sqlx::test(migrations = "../migrations")]
async fn three_chunks_out_of_order_become_a_playable_video_with_every_frame(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let src = gop_bframes(); // 10.6 s, a keyframe every second, B-frames
    let source = probe(&src, &Limits::default(), Deadline::none()).unwrap();
    let chunks = ts_chunks(&src, 3.5);
    assert_eq!(chunks.len(), 3);
    let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();

    let up = app.client.create_upload().await.unwrap();
    for i in [2usize, 0, 1] {
        let (status, _) = app
            .client
            .put_chunk(up.id, i as u32, chunks[i].clone())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
    }
    // A retry of a stored chunk is accepted once more and stored once.
    let (status, _) = app
        .client
        .put_chunk(up.id, 1, chunks[1].clone())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let view = app.client.upload(up.id).await.unwrap();
    assert_eq!(view.chunks.len(), 3);
    assert_eq!(view.bytes, bytes);

    let done = app.client.complete(up.id, Some(3)).await.unwrap();
    assert_eq!(done.source_bytes, bytes);
    let again = app.client.complete(up.id, Some(3)).await.unwrap();
    assert_eq!(
        (again.video_id, again.job_id),
        (done.video_id, done.job_id),
        "completion is idempotent"
    );

    let video = app
        .client
        .wait_for_video(done.video_id, READY_WITHIN)
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(
        video.live_tier.as_deref(),
        Some("fast"),
        "the fast tier publishes"
    );
    assert_eq!(video.frames, Some(source.video.frames));
    assert!(
        video
            .playback
            .expect("ready video has playback")
            .hls
            .is_some()
    );
    // The fast tier was encoded chunk by chunk as the upload arrived and published as HLS; its
    // MP4s follow a moment later.
    let until = std::time::Instant::now() + READY_WITHIN;
    let playback = loop {
        let v = app.client.video(done.video_id).await.unwrap();
        let p = v.playback.expect("still published");
        if p.mp4.len() >= 2 {
            break p;
        }
        assert!(
            std::time::Instant::now() < until,
            "at least two MP4 renditions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let dir = tempfile::tempdir().unwrap();
    for r in &playback.mp4 {
        let path = dir.path().join(format!("{}.mp4", r.name));
        app.client.download(&r.url, &path).await.unwrap();
        let got = probe(&path, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(
            got.video.frames, source.video.frames,
            "{}: frame count",
            r.name
        );
        assert_eq!(got.video.codec, "h264");
        assert_eq!((got.video.width, got.video.height), (r.width, r.height));
        assert!((got.video.duration_seconds - source.video.duration_seconds).abs() < 0.04);
        assert_eq!(got.audio.expect("audio kept").codec, "aac");
    }

    // HLS: the master lists every rung, and its relative URIs resolve under the media route.
    let master_url = playback.hls.clone().expect("HLS master");
    let resp = app.client.http().get(&master_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let master = resp.text().await.unwrap();
    assert!(master.starts_with("#EXTM3U"));
    let variants: Vec<&str> = master.lines().filter(|l| l.ends_with(".m3u8")).collect();
    assert_eq!(variants.len(), playback.mp4.len());
    let base = master_url.rsplit_once('/').unwrap().0;
    // Every init and media segment resolves, and they play as one stream with every frame.
    let hls_dir = tempfile::tempdir().unwrap();
    let (frames, audio_packets) = vtx_tests::fetch_hls(
        app.client.http(),
        &format!("{base}/{}", variants[0]),
        hls_dir.path(),
    )
    .await;
    assert_eq!(frames, source.video.frames);
    assert!(audio_packets > 0);
    let cover = app
        .client
        .http()
        .get(playback.cover.clone().expect("cover"))
        .send()
        .await
        .unwrap();
    assert_eq!(cover.status(), StatusCode::OK);
    assert_eq!(cover.headers()["content-type"], "image/jpeg");
    assert!(
        playback
            .mp4
            .iter()
            .all(|r| r.prefetch_bytes_3s.unwrap_or(0) > 0)
    );
    assert!(
        playback
            .mp4
            .iter()
            .all(|r| r.codec_string.as_deref().unwrap_or("").starts_with("avc1."))
    );

    // Range requests work, so players can seek.
    let url = &playback.mp4[0].url;
    let resp = app
        .client
        .http()
        .get(url)
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().len(), 100);
    // A malformed Range is ignored (RFC 9110): the whole object, not an error.
    for bad in ["bytes=abc", "bytes=5-1", "bytes=0-1,5-9", "items=0-9"] {
        let resp = app
            .client
            .http()
            .get(url)
            .header("Range", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{bad}");
        assert_eq!(
            resp.bytes().await.unwrap().len() as u64,
            playback.mp4[0].size_bytes
        );
    }
    // A range past the end cannot be served: 416.
    let resp = app
        .client
        .http()
        .get(url)
        .header("Range", "bytes=999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // The high tier follows and replaces the fast one with new, versioned objects.
    let high = app
        .client
        .wait_for_tier(done.video_id, "high", READY_WITHIN)
        .await
        .unwrap();
    assert_eq!(high.state, "published");
    let high_playback = high.playback.expect("playback");
    assert_eq!(high_playback.mp4.len(), playback.mp4.len());
    for (h, f) in high_playback.mp4.iter().zip(&playback.mp4) {
        assert_ne!(h.url, f.url, "{}", h.name);
        let path = dir.path().join(format!("high-{}.mp4", h.name));
        app.client.download(&h.url, &path).await.unwrap();
        let got = probe(&path, &Limits::default(), Deadline::none()).unwrap();
        assert_eq!(got.video.frames, source.video.frames, "high {}", h.name);
    }
    // A player asks which rendition to load: the smallest that covers it, by form and network.
    let ladder: Vec<(u32, u64)> = high_playback
        .mp4
        .iter()
        .map(|r| (r.height, r.bitrate))
        .collect();
    let full = app
        .client
        .playback(
            done.video_id,
            "form=fullscreen&network=wifi&screen=390x844&dpr=3",
        )
        .await
        .unwrap();
    let feed = app
        .client
        .playback(done.video_id, "form=feed&network=wifi&screen=390x844&dpr=1")
        .await
        .unwrap();
    assert_eq!(full.hls, high_playback.hls);
    assert!(high_playback.mp4.iter().any(|r| r.url == full.chosen.url));
    assert!(full.chosen.prefetch_bytes_3s.is_some_and(|b| b > 0));
    assert!(
        feed.chosen.height <= full.chosen.height && feed.player_height < full.player_height,
        "feed {:?} full {:?} ladder {ladder:?}",
        (feed.chosen.height, feed.player_height),
        (full.chosen.height, full.player_height)
    );
    assert_eq!(feed.alternatives.len() + 1, high_playback.mp4.len());
    for bad in [
        "form=tiny&screen=390x844",
        "screen=0x844",
        "screen=390x844&dpr=40",
        "",
    ] {
        let err = app.client.playback(done.video_id, bad).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid-query"),
            "{bad}: {err:#}"
        );
    }

    let job = app.client.job(done.job_id).await.unwrap();
    assert_eq!(job.state, "succeeded");
    let tiers: Vec<(&str, &str)> = job
        .tiers
        .iter()
        .map(|t| (t.tier.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(tiers, [("fast", "done"), ("high", "done")]);
    assert!(
        job.tiers.iter().all(|t| t.slices_done == t.slices_total
            && t.encode_ms.is_some()
            && t.merge_ms.is_some())
    );

    // Duplicate deliveries are acknowledged and change nothing.
    for task in [
        Task::EncodeSlice {
            job_id: done.job_id,
            tier: Tier::Fast,
            index: 0,
        },
        Task::Merge {
            job_id: done.job_id,
            tier: Tier::Fast,
        },
        Task::EncodeSlice {
            job_id: done.job_id,
            tier: Tier::High,
            index: 0,
        },
        Task::Merge {
            job_id: done.job_id,
            tier: Tier::High,
        },
    ] {
        assert_eq!(app.worker.handle(task).await, Outcome::Ack);
    }
    let after = app.client.video(done.video_id).await.unwrap();
    let urls =
        |p: &vtx_domain::api::Playback| p.mp4.iter().map(|r| r.url.clone()).collect::<Vec<_>>();
    assert_eq!(urls(&after.playback.unwrap()), urls(&high_playback));

    // Operators see queues, task durations, encode speed and tiers going live.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text =
            vtx_tests::get_text(app.client.http(), &format!("{}/metrics", app.client.base())).await;
        let wanted = [
            "vtx_queue_ready{queue=\"slices.fast\"}",
            "vtx_task_seconds_bucket",
            "vtx_encode_fps_bucket",
            "vtx_tiers_live_total{tier=\"high\"}",
        ];
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "metrics missing from:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // After the grace period the replaced tier's objects and the job's scratch are deleted.
    let fast_prefix = vtx_domain::keys::tier_output(done.video_id, done.job_id, Tier::Fast);
    let work_prefix = vtx_domain::keys::work(done.job_id);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = app.store.list(&fast_prefix).await.unwrap().len()
            + app.store.list(&work_prefix).await.unwrap().len();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{left} objects not collected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_chunk_that_is_not_gop_aligned_media_gets_422_and_nothing_is_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let junk: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = failure(c.put_chunk(up.id, 0, Bytes::from(junk)).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "chunk-not-media")
    );
    // A whole MP4 file is a video, but not a chunk: chunks are MPEG-TS segments.
    let mp4 = Bytes::from(std::fs::read(media("bikes.mp4")).unwrap());
    let err = failure(c.put_chunk(up.id, 0, mp4).await.unwrap_err());
    assert_eq!(err.code, "chunk-not-media");
    // A chunk cut inside a GOP: the second chunk without its first quarter.
    let chunks = ts_chunks(&gop_bframes(), 2.0);
    let packets = chunks[1].len() / 188;
    let mid_gop = chunks[1].slice((packets / 4) * 188..);
    let err = failure(c.put_chunk(up.id, 1, mid_gop).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "chunk-not-gop-aligned")
    );
    // A decode bomb: declared 320x240, switching to 8192x8192 frames after 4 s.
    let bomb = Bytes::from(std::fs::read(vtx_testkit::recordings::size_bomb()).unwrap());
    let err = failure(c.put_chunk(up.id, 0, bomb).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "too-large"),
        "{err:?}"
    );
    assert!(err.message.contains("8192x8192"), "{err:?}");
    assert!(c.upload(up.id).await.unwrap().chunks.is_empty());
    assert!(
        app.store
            .list(&format!("uploads/{}/", up.id))
            .await
            .unwrap()
            .is_empty(),
        "refused chunks leave no object behind"
    );
    // The same index takes a proper chunk afterwards.
    let (status, _) = c.put_chunk(up.id, 1, chunks[1].clone()).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_are_checked_and_stored_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let chunks = ts_chunks(&media("bikes.mp4"), 2.0);
    assert!(chunks.len() >= 5);

    // Same index, different bytes: refused, and the first bytes stay.
    c.put_chunk(up.id, 0, chunks[0].clone()).await.unwrap();
    let err = failure(c.put_chunk(up.id, 0, chunks[1].clone()).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::CONFLICT, "chunk-conflict")
    );
    // The same conflict is found even without a checksum header (after streaming the body).
    let err = failure(
        c.put_chunk_with_sha(up.id, 0, chunks[1].clone(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, "chunk-conflict");

    // A body that does not match its checksum is refused and not stored.
    let wrong = "0".repeat(64);
    let err = failure(
        c.put_chunk_with_sha(up.id, 1, chunks[1].clone(), Some(&wrong))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::BAD_REQUEST, "checksum-mismatch")
    );
    let view = c.upload(up.id).await.unwrap();
    assert_eq!(
        view.chunks.iter().map(|ch| ch.index).collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(view.chunks[0].size_bytes, chunks[0].len() as u64);

    // Completing with a gap is refused with the missing indices.
    c.put_chunk(up.id, 2, chunks[2].clone()).await.unwrap();
    let err = failure(c.complete(up.id, Some(3)).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "missing-chunks")
    );
    assert!(err.message.contains("[1]"), "{}", err.message);

    // CRC32C works as well as SHA-256.
    let body = chunks[3].clone();
    let good = crc32c::crc32c(&body);
    let err = failure(
        c.put_chunk_crc32c(up.id, 3, body.clone(), good ^ 1)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::BAD_REQUEST, "checksum-mismatch")
    );
    let (status, _) = c.put_chunk_crc32c(up.id, 3, body, good).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);

    // Limits and unknown ids.
    let err = failure(
        c.put_chunk(up.id, 1_000_000, chunks[4].clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, "invalid-chunk-index");
    let big = Bytes::from(vec![0u8; (app.cfg.uploads.max_chunk_bytes + 1) as usize]);
    let err = failure(c.put_chunk(up.id, 1, big).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "chunk-too-large")
    );
    let err = failure(c.upload(vtx_domain::UploadId::new()).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::NOT_FOUND, "upload-not-found")
    );
    let err = failure(c.video(vtx_domain::VideoId::new()).await.unwrap_err());
    assert_eq!(err.code, "video-not-found");

    // Only rendition objects are served.
    let resp = c
        .http()
        .get(format!("{}/v1/media/sources/x/source", c.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn readiness_checks_every_dependency(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let resp = app
        .client
        .http()
        .get(format!("{}/readyz", app.client.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["rabbitmq"], "ok");
    assert_eq!(body["checks"]["s3"], "ok");
    let health = app
        .client
        .http()
        .get(format!("{}/healthz", app.client.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    app.stop().await;
}

/// Waits until no object is left under `prefix`.
async fn wait_until_empty(app: &TestApp, prefix: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = app.store.list(prefix).await.unwrap();
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < until, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_aborted_upload_takes_no_chunks_and_its_objects_are_removed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let chunks = ts_chunks(&media("bikes.mp4"), 2.0);
    c.put_chunk(up.id, 0, chunks[0].clone()).await.unwrap();
    c.put_chunk(up.id, 1, chunks[1].clone()).await.unwrap();
    let prefix = format!("uploads/{}/", up.id);
    assert_eq!(app.store.list(&prefix).await.unwrap().len(), 2);

    c.abort(up.id).await.unwrap();
    c.abort(up.id).await.unwrap(); // again: still fine
    assert_eq!(c.upload(up.id).await.unwrap().state, "aborted");
    let err = failure(c.put_chunk(up.id, 2, chunks[2].clone()).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::CONFLICT, "upload-not-open")
    );
    let err = failure(c.complete(up.id, None).await.unwrap_err());
    assert_eq!(err.code, "upload-not-open");
    wait_until_empty(&app, &prefix).await;
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_abandoned_upload_expires_and_its_objects_are_removed(pool: PgPool) {
    let app = TestApp::spawn_with(pool, &[("VTX_UPLOAD_TTL_SECS", "1")], Default::default()).await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let chunks = ts_chunks(&media("bikes.mp4"), 2.0);
    c.put_chunk(up.id, 0, chunks[0].clone()).await.unwrap();
    let prefix = format!("uploads/{}/", up.id);
    wait_until_empty(&app, &prefix).await;
    assert_eq!(c.upload(up.id).await.unwrap().state, "expired");
    let err = failure(c.put_chunk(up.id, 1, chunks[1].clone()).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::GONE, "upload-expired")
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_job_whose_source_vanished_fails_after_bounded_retries(pool: PgPool) {
    let services = vtx_tests::Services {
        worker: true,
        scheduler: false,
    };
    // The ordinary path, where completing assembles the source (a live-ingest upload's source is
    // assembled later, from its chunks).
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_MAX_ATTEMPTS", "2"), ("VTX_LIVE_INGEST", "false")],
        services,
    )
    .await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let chunks = ts_chunks(&media("carphone_pristine.mp4"), 2.0);
    c.put_chunk(up.id, 0, chunks[0].clone()).await.unwrap();
    let done = c.complete(up.id, None).await.unwrap();
    // The source disappears before any scheduler looks at the job.
    app.store
        .delete(&vtx_domain::keys::source(done.video_id))
        .await
        .unwrap();
    let scheduler = vtx_scheduler::Scheduler::new(
        app.pool.clone(),
        app.store.clone(),
        app.broker.clone(),
        app.cfg.pipeline.clone(),
        &app.cfg.worker,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(scheduler.run(shutdown.clone()));
    let v = c.wait_for_video(done.video_id, READY_WITHIN).await.unwrap();
    assert_eq!(v.state, "failed");
    let job = c.job(done.job_id).await.unwrap();
    assert_eq!(job.error.unwrap().code, "retries-exhausted");
    assert_eq!(job.attempts, 2, "bounded");
    let dead = app.broker.get().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while dead
        .get_one(vtx_domain::messages::queue::DEAD)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < until,
            "the job message did not reach the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_outbox_row_that_is_not_a_task_is_set_aside_and_blocks_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Written by another version, or damaged: the relay cannot read it as a task.
    sqlx::query("INSERT INTO outbox (queue, payload) VALUES ('jobs', $1)")
        .bind(serde_json::json!({"type": "from_a_future_version", "job_id": 7}))
        .execute(&app.pool)
        .await
        .unwrap();
    let report = app
        .client
        .upload_video(
            &vtx_testkit::recordings::base(),
            &Default::default(),
            &|_, _| {},
        )
        .await
        .unwrap();
    let video = app
        .client
        .wait_for_video(report.completed.video_id, READY_WITHIN)
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    let (n, error): (i64, Option<String>) =
        sqlx::query_as("SELECT count(*), max(error) FROM outbox_set_aside")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
    assert!(error.unwrap().contains("from_a_future_version"));
    app.stop().await;
}
