//! Webhooks against real receivers: each verifies signatures with the Standard Webhooks
//! reference library (PyPI `standardwebhooks`), one fails its first requests, one fails always.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use vtx_domain::webhooks::{DeliveryList, EndpointView};
use vtx_tests::{ChildGuard, TestApp, progress};

struct Receiver {
    url: String,
    out: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(secret: &str, fail_first: i32) -> Self {
        Self::start_on(secret, fail_first, 0).await
    }

    /// On `port` (0: any free one).
    async fn start_on(secret: &str, fail_first: i32, port: u16) -> Self {
        Self::start_with(secret, &[("FAIL_FIRST", &fail_first.to_string())], port).await
    }

    /// With the receiver's settings `env` (see webhook_receiver.py), on `port`.
    async fn start_with(secret: &str, env: &[(&str, &str)], port: u16) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join(".vtx/py/bin/python");
        assert!(
            python.exists(),
            "standardwebhooks missing: run deploy/local/setup.sh (it installs it into .vtx/py)"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        std::fs::write(&out, "").unwrap();
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("tests/support/webhook_receiver.py"))
            .env("SECRET", secret)
            .envs(env.iter().copied())
            .env("OUT", &out)
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver starts")
            .unwrap()
            .expect("a port");
        Receiver {
            url: format!("http://127.0.0.1:{}/hook", port.trim()),
            out,
            _child: child,
            _dir: dir,
        }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

async fn register(app: &TestApp, body: serde_json::Value) -> reqwest::Response {
    app.client
        .http()
        .post(format!("{}/v1/webhooks", app.client.base()))
        .bearer_auth(app.cfg.auth.service_tokens[0].expose())
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn deliveries(app: &TestApp, endpoint: uuid::Uuid) -> DeliveryList {
    app.client
        .http()
        .get(format!(
            "{}/v1/webhooks/{endpoint}/deliveries",
            app.client.base()
        ))
        .bearer_auth(app.cfg.auth.service_tokens[0].expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn signed_events_reach_every_endpoint_at_least_once_with_retries(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_WEBHOOK_RETRY_SECS", "0.2,0.2,0.2,0.2")],
        vtx_tests::Services::default(),
    )
    .await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // Fails its first two requests, then takes everything.
    let flaky = Receiver::start(secret, 2).await;
    // Never takes anything.
    let dead = Receiver::start(secret, -1).await;

    // Bad registrations are refused with a stable code.
    for bad in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "http://127.0.0.1/x", "secret": "not-a-secret"}),
        json!({"url": "http://127.0.0.1/x", "event_types": ["video.exploded"]}),
        json!({}),
    ] {
        let r = register(&app, bad.clone()).await;
        assert!(r.status().is_client_error(), "{bad}: {}", r.status());
    }
    let r = register(&app, json!({"url": flaky.url, "secret": secret})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let flaky_ep: EndpointView = r.json().await.unwrap();
    assert_eq!(flaky_ep.secret.as_deref(), Some(secret));
    let r = register(
        &app,
        json!({"url": dead.url, "secret": secret, "event_types": ["video.published"]}),
    )
    .await;
    let dead_ep: EndpointView = r.json().await.unwrap();
    // Made with a secret of vtx's own, and disabled: it receives nothing.
    let r = register(&app, json!({"url": flaky.url, "enabled": false})).await;
    let off: EndpointView = r.json().await.unwrap();
    assert!(
        off.secret
            .as_deref()
            .is_some_and(|s| s.starts_with("whsec_"))
    );

    let clip = vtx_tests::media("bikes.mp4");
    let done = app
        .client
        .upload_video(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let video = done.completed.video_id.to_string();
    app.client
        .wait_for_tier(done.completed.video_id, "high", Duration::from_secs(240))
        .await
        .unwrap();

    // The flaky receiver ends up with video.published (fast tier) and video.upgraded (high).
    let until = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = flaky.received();
        let taken: Vec<&serde_json::Value> = got.iter().filter(|r| r["answered"] == 204).collect();
        if taken.iter().any(|r| r["type"] == "video.upgraded") {
            break got;
        }
        assert!(Instant::now() < until, "events never arrived: {got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(got.iter().all(|r| r["verified"] == true), "{got:#?}");
    let taken: Vec<&serde_json::Value> = got.iter().filter(|r| r["answered"] == 204).collect();
    let published: Vec<_> = taken
        .iter()
        .filter(|r| r["type"] == "video.published")
        .collect();
    assert_eq!(published.len(), 1, "{got:#?}");
    assert_eq!(published[0]["video_id"], video.as_str());
    assert_eq!(published[0]["live_tier"], "fast");
    let upgraded = taken
        .iter()
        .find(|r| r["type"] == "video.upgraded")
        .unwrap();
    assert_eq!(upgraded["live_tier"], "high");
    // Its first event was refused twice and sent again under the same webhook-id.
    let first_id = &got[0]["id"];
    let tries = got.iter().filter(|r| &r["id"] == first_id).count();
    assert_eq!(tries, 3, "{got:#?}");
    let listed = deliveries(&app, flaky_ep.id).await;
    assert!(
        listed
            .deliveries
            .iter()
            .all(|d| d.state == vtx_domain::DeliveryState::Delivered),
        "{listed:?}"
    );
    assert!(listed.deliveries.iter().any(|d| d.attempts == 3));

    // The dead receiver: tried 1 + 4 times, then failed for good and visible as such.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = deliveries(&app, dead_ep.id).await;
        if let Some(d) = listed.deliveries.first()
            && d.state == vtx_domain::DeliveryState::Failed
        {
            assert_eq!(
                listed.deliveries.len(),
                1,
                "only video.published: {listed:?}"
            );
            assert_eq!((d.attempts, d.last_status), (5, Some(500)));
            break;
        }
        assert!(Instant::now() < until, "never failed: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        dead.received().len(),
        5,
        "one attempt and four retries: {:#?}",
        dead.received()
    );
    assert!(deliveries(&app, off.id).await.deliveries.is_empty());
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn events_wait_in_the_database_for_a_receiver_and_a_gateway_that_come_back(pool: PgPool) {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // A port nothing listens on yet: every attempt fails until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A retry every second for two minutes.
    let retries = vec!["1"; 120].join(",");
    let settings = [("VTX_WEBHOOK_RETRY_SECS", retries.as_str())];
    let first = TestApp::spawn_with(pool.clone(), &settings, vtx_tests::Services::default()).await;
    let r = register(
        &first,
        json!({"url": format!("http://127.0.0.1:{port}/hook"), "secret": secret}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let done = first
        .client
        .upload_video(
            &vtx_tests::media("bikes.mp4"),
            &Default::default(),
            &|_, _| {},
        )
        .await
        .unwrap();
    first
        .client
        .wait_for_tier(done.completed.video_id, "high", Duration::from_secs(240))
        .await
        .unwrap();
    // The services that recorded the events go away before anything was delivered.
    first.stop().await;

    // The receiver comes up, then a new gateway (and workers) on the same database.
    let receiver = Receiver::start_on(secret, 0, port).await;
    let second = TestApp::spawn_with(pool, &settings, vtx_tests::Services::default()).await;
    let video = done.completed.video_id.to_string();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let got = receiver.received();
        let taken: Vec<&serde_json::Value> = got
            .iter()
            .filter(|r| r["answered"] == 204 && r["video_id"] == video.as_str())
            .collect();
        let types: std::collections::BTreeSet<&str> =
            taken.iter().filter_map(|r| r["type"].as_str()).collect();
        if types.contains("video.published") && types.contains("video.upgraded") {
            assert!(got.iter().all(|r| r["verified"] == true), "{got:#?}");
            break;
        }
        assert!(Instant::now() < until, "events were lost: {got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn no_event_is_lost_when_the_worker_and_the_gateway_sending_it_are_killed(pool: PgPool) {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // The first request is held a long time: its sender is killed -9 while it waits.
    let receiver =
        Receiver::start_with(secret, &[("HOLD_FIRST", "1"), ("HOLD_SECS", "300")], 0).await;
    // Only the gateway processes send webhooks; the in-process one serves the test's requests.
    // An attempt lasts at most 2 s, so a killed sender's lease runs out after 9 s.
    let retries = vec!["1"; 120].join(",");
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_WEBHOOK_DISPATCH", "false"),
            ("VTX_WEBHOOK_TIMEOUT_SECS", "2"),
            ("VTX_WEBHOOK_RETRY_SECS", retries.as_str()),
        ],
        vtx_tests::Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let r = register(&app, json!({"url": receiver.url, "secret": secret})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sender = [("VTX_WEBHOOK_DISPATCH", "true")];
    let mut worker = ChildGuard(app.spawn_process("webhooks-worker-a", "worker", &[]));
    let mut gateway = ChildGuard(app.spawn_process("webhooks-gateway-a", "gateway", &sender));
    let clip = vtx_tests::media("bikes.mp4");
    let done = app
        .client
        .upload_video(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let video = done.completed.video_id.to_string();

    // video.published is in flight to the receiver: kill -9 both its sender and the worker.
    let until = Instant::now() + Duration::from_secs(180);
    let held = loop {
        if let Some(held) = receiver.received().into_iter().find(|r| r["held"] == true) {
            break held;
        }
        assert!(Instant::now() < until, "no webhook reached the receiver");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.0.kill().unwrap();
    gateway.0.kill().unwrap();
    let _ = (worker.0.wait(), gateway.0.wait());
    assert_eq!(held["type"], "video.published");
    assert_eq!(held["video_id"], video.as_str());
    let (tier,): (String,) = sqlx::query_as("SELECT live_tier FROM videos WHERE id = $1")
        .bind(done.completed.video_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    progress(&format!(
        "webhooks: killed mid-delivery with the {tier} tier live"
    ));

    // New processes take over: the same event arrives (same webhook-id), then the upgrade.
    let _worker = ChildGuard(app.spawn_process("webhooks-worker-b", "worker", &[]));
    let _gateway = ChildGuard(app.spawn_process("webhooks-gateway-b", "gateway", &sender));
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let got = receiver.received();
        let taken: Vec<&serde_json::Value> = got
            .iter()
            .filter(|r| r["answered"] == 204 && r["video_id"] == video.as_str())
            .collect();
        let published = taken.iter().find(|r| r["type"] == "video.published");
        let upgraded = taken.iter().find(|r| r["type"] == "video.upgraded");
        if let (Some(published), Some(_)) = (published, upgraded) {
            assert_eq!(published["id"], held["id"], "the same event, not a new one");
            assert!(
                got.iter()
                    .all(|r| r["held"] == true || r["verified"] == true)
            );
            // None invented: one event id per type, however many attempts.
            let mut ids = std::collections::BTreeMap::new();
            for r in &taken {
                ids.entry(r["type"].as_str().unwrap().to_string())
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(r["id"].as_str().unwrap().to_string());
            }
            assert!(ids.values().all(|set| set.len() == 1), "{ids:#?}");
            break;
        }
        assert!(Instant::now() < until, "events were lost: {got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}
