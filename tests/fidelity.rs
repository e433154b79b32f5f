//! Faithful to real recordings, through the service: a phone recording (variable frame rate,
//! audio stored before video), audio that starts before the video, an AVI without presentation
//! times and damaged files go up as `vtx upload` sends them (chunks transcoded while they arrive,
//! chunks assembled, or whole over tus) and every MP4 and HLS rendition of both tiers shows every
//! frame at its source time with the audio where the source has it, read from the outside with
//! ffprobe. `vtx upload --wait` ends with a distinct exit code per outcome.

use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;
use vtx_domain::VideoId;
use vtx_domain::api::VideoView;
use vtx_testkit::outside::{assert_hls_like_source, assert_same_times};
use vtx_testkit::recordings::{self, Damage};
use vtx_tests::{Services, TestApp};

const WITHIN: Duration = Duration::from_secs(180);

/// Every MP4 of the video's live tier, and every variant of its HLS master, against `src`.
async fn assert_live_tier_like_source(app: &TestApp, v: &VideoView, src: &Path, what: &str) {
    let tier = v.live_tier.clone().unwrap_or_default();
    let playback = v.playback.clone().expect("published");
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    for r in &playback.mp4 {
        let path = dir.path().join(format!("{}.mp4", r.name));
        let bytes = http
            .get(&r.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(&path, bytes).unwrap();
        assert_same_times(src, &path, &format!("{what}, {tier} {} MP4", r.name));
    }
    let master_url = playback.hls.expect("an HLS master");
    let master = vtx_tests::get_text(&http, &master_url).await;
    let base = &master_url[..master_url.rfind('/').unwrap() + 1];
    for (i, variant) in master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .enumerate()
    {
        let d = dir.path().join(format!("hls-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        vtx_tests::fetch_hls(&http, &format!("{base}{variant}"), &d).await;
        assert_hls_like_source(
            src,
            &d.join("index.m3u8"),
            &format!("{what}, {tier} {variant}"),
        );
    }
    let _ = app;
}

/// Uploads `src` as `vtx upload` does, checks the fast tier as published and the high tier once
/// it is live; returns the video.
async fn upload_and_check_both_tiers(app: &TestApp, src: &Path, what: &str) -> VideoView {
    let report = app
        .client
        .upload_video(src, &Default::default(), &|_, _| {})
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let id = report.completed.video_id;
    let fast = app.client.wait_for_video(id, WITHIN).await.unwrap();
    assert_eq!(fast.state, "published", "{what}: {fast:?}");
    // The fast tier's objects stay fetchable after the swap (a long grace in these tests), so
    // it is checked whether or not the high tier has replaced it already.
    assert_tier_like_source(app, report.completed.job_id, "fast", src, what).await;
    let high = app.client.wait_for_tier(id, "high", WITHIN).await.unwrap();
    assert_eq!(high.live_tier.as_deref(), Some("high"), "{what}: {high:?}");
    assert_live_tier_like_source(app, &high, src, what).await;
    high
}

/// Every MP4 and HLS rendition a job's `tier` recorded, fetched through the gateway, against
/// `src` (waiting for the MP4s a live-ingest fast tier muxes in the background).
async fn assert_tier_like_source(
    app: &TestApp,
    job: vtx_domain::JobId,
    tier: &str,
    src: &Path,
    what: &str,
) {
    let deadline = std::time::Instant::now() + WITHIN;
    let rows: Vec<(String, String, String, Option<String>)> = loop {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT name, container, object_key, hls_playlist_key FROM renditions
             WHERE job_id = $1 AND tier = $2 ORDER BY name, container",
        )
        .bind(job.as_uuid())
        .bind(tier)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let mut names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        names.dedup();
        let mp4 = rows.iter().filter(|r| r.1 == "mp4").count();
        if mp4 > 0 && mp4 == names.len() {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {tier} renditions {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let url = |key: &str| format!("{}/v1/media/{key}", app.client.base());
    let mut playlists: Vec<String> = rows.iter().filter_map(|r| r.3.clone()).collect();
    playlists.sort();
    playlists.dedup();
    for (name, container, key, _) in rows.iter().filter(|r| r.1 == "mp4") {
        let path = dir.path().join(format!("{name}.{container}"));
        let resp = http
            .get(url(key))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        std::fs::write(&path, resp.bytes().await.unwrap()).unwrap();
        assert_same_times(src, &path, &format!("{what}, {tier} {name} MP4"));
    }
    for (i, key) in playlists.iter().enumerate() {
        let d = dir.path().join(format!("hls-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        vtx_tests::fetch_hls(&http, &url(key), &d).await;
        assert_hls_like_source(src, &d.join("index.m3u8"), &format!("{what}, {tier} {key}"));
    }
}

async fn protocol_of(app: &TestApp, video: VideoId) -> String {
    sqlx::query_scalar(
        "SELECT u.protocol FROM uploads u JOIN videos v ON v.upload_id = u.id WHERE v.id = $1",
    )
    .bind(video.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn recordings_uploaded_in_chunks_keep_their_times_in_both_tiers(pool: PgPool) {
    // Chunks transcoded while the upload arrives (fast tier), then the assembled source (high).
    let app =
        TestApp::spawn_with(pool, &[("VTX_SWAP_GRACE_SECS", "600")], Services::default()).await;
    for (what, src) in [
        ("variable rate, audio stored first", recordings::vfr_phone()),
        ("audio 0.5 s before video", recordings::audio_early()),
    ] {
        let v = upload_and_check_both_tiers(&app, &src, what).await;
        assert_eq!(protocol_of(&app, v.id).await, "chunks", "{what}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_assembled_before_transcoding_keep_their_times(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_LIVE_INGEST", "false"), ("VTX_SWAP_GRACE_SECS", "600")],
        Services::default(),
    )
    .await;
    let src = recordings::vfr_phone();
    upload_and_check_both_tiers(&app, &src, "variable rate, assembled").await;
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_file_the_chunk_cutter_refuses_goes_whole_over_tus_and_keeps_its_times(pool: PgPool) {
    // MPEG-4 Part 2 with B-frames in AVI: no presentation times on key and P frames (the
    // MPEG-TS muxer refuses them as they are) and open GOPs: sent whole, over tus.
    let app =
        TestApp::spawn_with(pool, &[("VTX_SWAP_GRACE_SECS", "600")], Services::default()).await;
    let src = recordings::avi_without_pts();
    let v = upload_and_check_both_tiers(&app, &src, "AVI without presentation times").await;
    assert_eq!(protocol_of(&app, v.id).await, "tus");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn damaged_recordings_are_concealed_counted_and_published(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, &[("VTX_SWAP_GRACE_SECS", "600")], Services::default()).await;
    let aac = recordings::damaged(
        "dmg-aac.mp4",
        &recordings::base(),
        "a:0",
        40,
        Damage::Middle,
    );
    let v = upload_and_check_both_tiers(&app, &aac, "one damaged AAC frame").await;
    let c = v.concealed.expect("the status reports what was concealed");
    assert_eq!((c.video_frames, c.audio_frames), (0, 1), "{v:?}");

    // Damage inside a packet whose headers survive (a packet with no picture left at all
    // merges into its neighbour when MPEG-TS is parsed: docs/architecture.md).
    let h264 = recordings::damaged(
        "dmg-slice.mp4",
        &recordings::ntsc_mp3(),
        "v:0",
        40,
        Damage::Middle,
    );
    let v = upload_and_check_both_tiers(&app, &h264, "an H.264 slice error").await;
    let c = v.concealed.expect("the status reports what was concealed");
    assert_eq!(c.video_frames, 1, "{v:?}");
    let job = app.client.job(v.job_id.unwrap()).await.unwrap();
    // A slice error is concealed by the decoder itself, which flags the frame it mended
    // (not always under frame threading): counted where flagged, never more than once.
    assert!(
        job.tiers.iter().all(|t| t.concealed_video_frames <= 1),
        "{job:?}"
    );

    // Damage beyond the policy (more than 1% of frames) fails the video with the counts.
    let many = recordings::damaged_packets(
        "dmg-h264-many.mp4",
        &recordings::ntsc_mp3(),
        "v:0",
        &[20, 35, 50, 65, 80, 95, 110, 125, 130, 140],
        Damage::Whole,
    );
    let report = app
        .client
        .upload_video(&many, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let v = app
        .client
        .wait_for_video(report.completed.video_id, WITHIN)
        .await
        .unwrap();
    assert_eq!(v.state, "failed", "{v:?}");
    let e = v.error.expect("an error");
    assert_eq!(e.code, "corrupt-stream", "{e:?}");
    assert!(
        e.message.contains("video frames could not be decoded"),
        "{e:?}"
    );
    app.stop().await;
}

/// `vtx upload FILE --wait` against `app`, off the runtime: (exit code, stderr).
async fn vtx_upload_wait(app: &TestApp, file: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let env = app.env.clone();
    let url = app.client.base().to_string();
    let file = file.to_path_buf();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(vtx_tests::vtx_binary())
            .envs(env)
            .args(["upload", "--no-resume", "--wait", "--url", &url])
            .args(extra)
            .arg(file)
            .output()
            .expect("vtx runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn upload_wait_exits_with_the_outcome(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let clip = recordings::base();
    let (code, err) = vtx_upload_wait(&app, &clip, &[]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("published"), "{err}");

    // A text file goes whole over tus and fails as not-a-video: printed, exit code 2.
    let text = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(text.path(), "not a video at all, just text\n".repeat(100)).unwrap();
    let (code, err) = vtx_upload_wait(&app, text.path(), &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("failed: not-a-video"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("published")), "{err}");

    // Still processing when the wait runs out: exit code 3.
    let (code, err) = vtx_upload_wait(&app, &clip, &["--wait-timeout", "0"]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("timed out"), "{err}");
    app.stop().await;
}
