//! The web page in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/run.mjs`) uploads through tus-js-client and plays with hls.js, on vtx's own
//! page and from another origin.

use std::path::PathBuf;

use sqlx::PgPool;
use vtx_domain::api::GrantRequest;
use vtx_tests::TestApp;

#[sqlx::test(migrations = "../migrations")]
async fn a_browser_uploads_with_tus_js_client_and_plays_with_hls_js(pool: PgPool) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let web = root.join(".vtx/web");
    assert!(
        web.join("node_modules/playwright-core").exists()
            && PathBuf::from("/usr/bin/chromium").exists(),
        "chromium or the npm packages are missing: run deploy/local/setup.sh"
    );
    let vendor = web.join("node_modules");
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_WEB_VENDOR_DIR", vendor.to_str().unwrap())],
        vtx_tests::Services::default(),
    )
    .await;
    let grant = app
        .client
        .grant(&GrantRequest::default())
        .await
        .unwrap()
        .token;
    let shots = std::env::var_os("VTX_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("vtx-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let clip = vtx_tests::media("bikes.mp4");
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .arg(app.client.base())
        .arg(&grant)
        .arg(&clip)
        .arg(&shots)
        .env("VTX_WEB_DIR", &web)
        .env("VTX_SERVICE_TOKEN", app.cfg.auth.service_tokens[0].expose())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "browser: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed: {stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["tiers"], serde_json::json!(["fast", "high"]));
    assert_eq!(summary["other_state"]["ended"], true);
    app.stop().await;
}
