//! What operators run: the Kubernetes manifests validate offline, and every metric that an
//! alert or a dashboard panel uses is one that a running vtx exports; the worker, scheduler
//! and hotness processes answer their probes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use vtx_tests::{ChildGuard, Services, TestApp};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_kubernetes_manifests_render_and_validate_offline() {
    let out = std::process::Command::new(root().join("deploy/kubernetes/check.sh"))
        .output()
        .expect("check.sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "deploy/kubernetes/check.sh failed:\n{text}"
    );
    for overlay in ["small", "large"] {
        assert!(
            text.contains(&format!("{overlay}: built-in objects valid")),
            "{text}"
        );
    }
    assert!(text.contains("\"ScaledObject\":4"), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Metric names (`vtx_...`) in a file, histogram series suffixes removed.
fn metrics_named_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("vtx_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        i = end;
    }
    names
}

/// Names of the metric families in a Prometheus text exposition.
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Waits until `url` answers 200.
async fn until_ok(url: &str) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(url).await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < until, "{url}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn service_processes_answer_probes_and_export_every_metric_alerts_and_dashboards_use(
    pool: PgPool,
) {
    // The in-process app is the gateway only; the other services run as processes.
    let app = TestApp::spawn_with(
        pool,
        &[],
        Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let mut processes = Vec::new();
    let mut metrics_urls = Vec::new();
    for (name, command) in [
        ("ops-scheduler", "scheduler"),
        ("ops-worker", "worker"),
        ("ops-hotness", "hotness"),
    ] {
        let addr = format!("127.0.0.1:{}", free_port());
        processes.push(ChildGuard(app.spawn_process(
            name,
            command,
            &[("VTX_METRICS_ADDR", &addr), ("VTX_HOT_PERIOD_SECS", "2")],
        )));
        metrics_urls.push(format!("http://{addr}"));
    }
    // Alive (each names its loops) and ready (PostgreSQL, RabbitMQ and S3 answer).
    for base in &metrics_urls {
        let health: serde_json::Value =
            serde_json::from_str(&until_ok(&format!("{base}/healthz")).await).unwrap();
        assert_eq!(health["status"], "ok", "{base}: {health}");
        assert!(!health["loops"].as_array().unwrap().is_empty(), "{health}");
        let ready: serde_json::Value =
            serde_json::from_str(&until_ok(&format!("{base}/readyz")).await).unwrap();
        assert_eq!(ready["checks"]["postgres"], "ok", "{ready}");
        assert_eq!(ready["checks"]["rabbitmq"], "ok", "{ready}");
        assert_eq!(ready["checks"]["s3"], "ok", "{ready}");
    }

    // Work flows through them: both tiers go live.
    let done = app
        .client
        .upload_video(
            &vtx_tests::media("bikes.mp4"),
            &Default::default(),
            &|_, _| {},
        )
        .await
        .unwrap();
    app.client
        .wait_for_tier(done.completed.video_id, "high", Duration::from_secs(240))
        .await
        .unwrap();

    // Every metric the alerts and the dashboard use is exported by some process.
    let mut used = metrics_named_in("deploy/kubernetes/base/monitoring.yaml");
    used.extend(metrics_named_in("deploy/kubernetes/base/dashboard.json"));
    used.extend(metrics_named_in("deploy/kubernetes/rules-test.yaml"));
    assert!(used.len() >= 10, "{used:?}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut have = exported(&get(&format!("{}/metrics", app.client.base())).await.1);
        for base in &metrics_urls {
            have.extend(exported(&get(&format!("{base}/metrics")).await.1));
        }
        let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "used by alerts or the dashboard but exported by no process: {missing:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(processes);
    app.stop().await;
}
