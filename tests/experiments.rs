//! A/B experiments: players' simulated reports come back as the report's numbers, exactly; a
//! video experiment's arm decides the encoder profile the video is planned with.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use vtx_domain::experiments::{ExperimentReport, ExperimentView};
use vtx_testkit::{derived, media};
use vtx_tests::{Services, TestApp};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .http()
        .request(method, format!("{}{path}", app.client.base()))
        .bearer_auth(app.cfg.auth.service_tokens[0].expose());
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    call(app, reqwest::Method::POST, path, Some(body)).await
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    call(app, reqwest::Method::GET, path, None).await
}

/// What the test simulated for one arm.
#[derive(Default)]
struct Expected {
    plays: u64,
    failed: u64,
    effective: u64,
    bytes: Vec<f64>,
    first_frames: Vec<f64>,
}

/// Wilson's 95% interval, written out independently of the service's.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.959_963_984_540_054f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    (c - h, c + h)
}

fn close(a: Option<f64>, b: f64, what: &str) {
    let a = a.unwrap_or_else(|| panic!("{what}: missing"));
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_experiment_reports_exactly_what_players_reported(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[],
        Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    // Refusals: one arm, a bad name, an encoder profile in a viewer experiment.
    for arms in [
        json!([{"name": "a", "weight": 1}]),
        json!([{"name": "a b", "weight": 1}, {"name": "c", "weight": 1}]),
        json!([{"name": "a", "weight": 1, "quality_target": "psnr:40"}, {"name": "c", "weight": 1}]),
    ] {
        let r = post(
            &app,
            "/v1/experiments",
            json!({"name": "x", "unit": "viewer", "arms": arms}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "invalid-experiment"
        );
    }
    // A VMAF target where the deployment has no vmaf tool (this one has none): the arm would
    // run at fixed rate factors, so it is refused.
    let r = post(
        &app,
        "/v1/experiments",
        json!({"name": "x", "unit": "video", "arms": [
            {"name": "a", "weight": 1, "quality_target": "vmaf:93"}, {"name": "b", "weight": 1}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e = r.json::<Value>().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("vmaf"),
        "{e}"
    );
    let created = post(
        &app,
        "/v1/experiments",
        json!({
            "name": "720p cap against 480p cap",
            "unit": "viewer",
            "arms": [
                {"name": "cap720", "weight": 1, "max_height": 720},
                {"name": "cap480", "weight": 1, "max_height": 480}
            ],
            "effective_play_seconds": 3
        }),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let e: ExperimentView = created.json().await.unwrap();
    assert_eq!(e.state, "running");
    let again = post(
        &app,
        "/v1/experiments",
        json!({"name": "y", "unit": "viewer", "arms": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);

    // 400 simulated plays from 400 viewers, in two batches, plus reports without a viewer.
    let video = uuid::Uuid::new_v4().to_string();
    let mut expected = [Expected::default(), Expected::default()];
    let mut reports = Vec::new();
    for i in 0..400u64 {
        let viewer = format!("viewer-{i}");
        let a: Value = get(
            &app,
            &format!("/v1/experiments/{}/assignment?key={viewer}", e.id),
        )
        .await
        .json()
        .await
        .unwrap();
        let arm = usize::from(a["arm"] == "cap480");
        assert_eq!(a["max_height"], if arm == 0 { 720 } else { 480 });
        let failed = i % 13 == 0;
        let watched = (i % 9) as f64 * 0.75; // 0 to 6 s
        let first = (!failed).then_some(120 + (i * 37) % 900 + arm as u64 * 50);
        let bytes = 200_000 + (i * 7919) % 300_000 - arm as u64 * 40_000;
        let x = &mut expected[arm];
        x.plays += 1;
        x.failed += u64::from(failed);
        x.effective += u64::from(!failed && watched >= 3.0);
        x.bytes.push(bytes as f64);
        if let Some(f) = first {
            x.first_frames.push(f as f64);
        }
        reports.push(json!({
            "video_id": video, "viewer_id": viewer, "first_frame_ms": first,
            "stalls": i % 3, "failed": failed, "watched_seconds": watched, "bytes": bytes
        }));
    }
    for batch in reports.chunks(200) {
        let r = post(&app, "/v1/playback-reports", json!({"reports": batch})).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (body["accepted"].as_u64(), body["counted"].as_u64()),
            (Some(200), Some(200))
        );
    }
    let anonymous = post(
        &app,
        "/v1/playback-reports",
        json!({"reports": [{"video_id": video, "watched_seconds": 10.0, "bytes": 5}]}),
    )
    .await;
    assert_eq!(anonymous.json::<Value>().await.unwrap()["counted"], 0);
    let bad = post(
        &app,
        "/v1/playback-reports",
        json!({"reports": [{"video_id": video, "watched_seconds": -1.0, "bytes": 5}]}),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let report: ExperimentReport = get(&app, &format!("/v1/experiments/{}", e.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report.arms.len(), 2);
    for (arm, x) in report.arms.iter().zip(&mut expected) {
        let n = x.plays;
        assert!(
            n > 150,
            "{}: {n} plays; assignment should split 400 about evenly",
            arm.name
        );
        assert_eq!(arm.plays, n);
        assert_eq!((arm.failure_rate.count, arm.failure_rate.of), (x.failed, n));
        assert_eq!(arm.effective_play_rate.count, x.effective);
        let (lo, hi) = wilson(x.failed, n);
        close(arm.failure_rate.low, lo, "failure low");
        close(arm.failure_rate.high, hi, "failure high");
        let (lo, hi) = wilson(x.effective, n);
        close(arm.effective_play_rate.low, lo, "effective low");
        close(arm.effective_play_rate.high, hi, "effective high");
        // Mean bytes per play, with the normal interval from the sample standard deviation.
        let nf = n as f64;
        let mean = x.bytes.iter().sum::<f64>() / nf;
        let sd = (x.bytes.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt();
        close(arm.bytes_per_play.value, mean, "bytes mean");
        close(
            arm.bytes_per_play.low,
            mean - 1.959_963_984_540_054 * sd / nf.sqrt(),
            "bytes low",
        );
        // First frame: nearest-rank quantiles; the interval's ranks from the binomial.
        x.first_frames.sort_by(f64::total_cmp);
        let m = x.first_frames.len();
        assert_eq!(arm.first_frame_ms_p50.n, m as u64);
        for (q, got) in [
            (0.5, &arm.first_frame_ms_p50),
            (0.95, &arm.first_frame_ms_p95),
        ] {
            let rank = (m as f64 * q).ceil() as usize;
            close(got.value, x.first_frames[rank - 1], "quantile");
            // The textbook ranks: round(mq -+ z sqrt(mq(1-q))), the upper one plus 1.
            let spread = 1.959_963_984_540_054 * (m as f64 * q * (1.0 - q)).sqrt();
            let lo = (m as f64 * q - spread).round() as usize;
            let hi = (m as f64 * q + 1.0 + spread).round() as usize;
            assert!(
                lo >= 1 && hi <= m,
                "{m} values give a 95% interval for p{q}"
            );
            close(got.low, x.first_frames[lo - 1], "quantile low");
            close(got.high, x.first_frames[hi - 1], "quantile high");
        }
    }

    // Stopping without naming a winner keeps the arm with fewer bytes per play (480p here;
    // neither arm is significantly worse on failures or effective plays).
    let stopped = post(&app, &format!("/v1/experiments/{}/stop", e.id), json!({})).await;
    assert_eq!(stopped.status(), StatusCode::OK);
    let stopped: ExperimentView = stopped.json().await.unwrap();
    assert_eq!(
        (stopped.state.as_str(), stopped.winner.as_deref()),
        ("stopped", Some("cap480"))
    );
    let later = post(
        &app,
        "/v1/playback-reports",
        json!({"reports": [{"video_id": video, "viewer_id": "viewer-1", "watched_seconds": 1.0, "bytes": 5}]}),
    )
    .await;
    assert_eq!(later.json::<Value>().await.unwrap()["counted"], 0);
    let twice = post(&app, &format!("/v1/experiments/{}/stop", e.id), json!({})).await;
    assert_eq!(twice.status(), StatusCode::CONFLICT);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_video_experiment_encodes_each_video_as_its_arm_and_the_winner_stays(pool: PgPool) {
    // Whole-file planning (no live ingest), so the fast tier's job has a plan.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_TIERS", "fast"), ("VTX_LIVE_INGEST", "false")],
        Services::default(),
    )
    .await;
    let e: ExperimentView = post(
        &app,
        "/v1/experiments",
        json!({
            "name": "fixed rate factors against per-title",
            "unit": "video",
            "arms": [
                {"name": "fixed", "weight": 1, "quality_target": "off", "psychovisual": true},
                {"name": "psnr42", "weight": 1, "quality_target": "psnr:42"}
            ]
        }),
    )
    .await
    .json()
    .await
    .unwrap();
    let clip = derived(
        "bikes-3s.mp4",
        &[
            "-i",
            media("bikes.mp4").to_str().unwrap(),
            "-t",
            "3",
            "-c",
            "copy",
        ],
    );
    let done = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    app.client
        .wait_for_tier(done.video_id, "fast", Duration::from_secs(300))
        .await
        .unwrap();
    let a: Value = get(
        &app,
        &format!("/v1/experiments/{}/assignment?key={}", e.id, done.video_id),
    )
    .await
    .json()
    .await
    .unwrap();
    let (arm, profile, psychovisual): (String, Value, Value) = sqlx::query_as(
        "SELECT e.arm, j.plan->'profile', j.plan->'psychovisual' FROM experiment_videos e
         JOIN jobs j ON j.video_id = e.video_id WHERE e.video_id = $1",
    )
    .bind(done.video_id.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(a["arm"], arm.as_str());
    let want = if arm == "fixed" {
        json!("Off")
    } else {
        json!({"Target": {"metric": "psnr", "value": 42.0}})
    };
    assert_eq!(profile, want, "the plan carries the arm's profile");
    let want = if arm == "fixed" {
        json!(true)
    } else {
        json!(null)
    };
    assert_eq!(psychovisual, want, "and its psychovisual setting");
    assert_eq!(a["psychovisual"], want);
    // A player retrying its report (same play id) is counted once.
    let report = json!({"reports": [{"video_id": done.video_id.to_string(), "play_id": "play-1", "first_frame_ms": 300, "watched_seconds": 4.0, "bytes": 1000}]});
    for counted in [1, 0] {
        let r: Value = post(&app, "/v1/playback-reports", report.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (r["accepted"].as_u64(), r["counted"].as_u64()),
            (Some(1), Some(counted))
        );
    }
    let report: ExperimentReport = get(&app, &format!("/v1/experiments/{}", e.id))
        .await
        .json()
        .await
        .unwrap();
    let ours = report.arms.iter().find(|x| x.name == arm).unwrap();
    assert_eq!((ours.videos, ours.plays), (1, 1));
    // Stopped with a winner: the next video is planned with the winner's profile.
    let stopped = post(
        &app,
        &format!("/v1/experiments/{}/stop", e.id),
        json!({"winner": "psnr42"}),
    )
    .await;
    assert_eq!(stopped.status(), StatusCode::OK);
    let next = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    app.client
        .wait_for_tier(next.video_id, "fast", Duration::from_secs(300))
        .await
        .unwrap();
    let profile: Value = sqlx::query_scalar("SELECT plan->'profile' FROM jobs WHERE video_id = $1")
        .bind(next.video_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        profile,
        json!({"Target": {"metric": "psnr", "value": 42.0}})
    );
    app.stop().await;
}
