//! A whole vtx (gateway, scheduler, worker, outbox relay) in the test process, on the real
//! PostgreSQL, RabbitMQ and S3 server, isolated per test: its own database (from
//! `#[sqlx::test]`), queue prefix, object key prefix and port. Worker processes (`vtx worker`)
//! can be started against the same isolation for tests that kill them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sqlx::PgPool;
use vtx_client::Client;
use vtx_infra::broker::BrokerClient;
use vtx_infra::{Config, ObjectStore};
use vtx_stack::{Resources, Roles, Stack};
use vtx_worker::Worker;

pub use vtx_testkit::{derived, gop_bframes, looped, media};

pub mod tls;

/// `clip` cut into GOP-aligned MPEG-TS chunks of at least `seconds`, as the client sends them.
pub fn ts_chunks(clip: &Path, seconds: f64) -> Vec<bytes::Bytes> {
    let dir = tempfile::tempdir().expect("temp dir");
    vtx_media::cut_chunks(clip, dir.path(), seconds, vtx_media::Deadline::none())
        .expect("clip cuts into chunks")
        .iter()
        .map(|c| bytes::Bytes::from(std::fs::read(&c.path).expect("chunk file")))
        .collect()
}

/// The body of a successful GET of `url`, as text (a playlist, metrics).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Downloads an HLS media playlist (`url`) with its init and media segments into `dir` and
/// reads it back with FFmpeg's HLS demuxer: (video frames, audio packets), checking that each
/// stream's decode times only go up across every segment and chunk join.
pub async fn fetch_hls(http: &reqwest::Client, url: &str, dir: &Path) -> (u64, u64) {
    let text = get_text(http, url).await;
    let base = &url[..url.rfind('/').expect("a path") + 1];
    for uri in &vtx_domain::live_ingest::playlist_files(&text) {
        let bytes = http
            .get(format!("{base}{uri}"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap_or_else(|e| panic!("{uri}: {e}"))
            .bytes()
            .await
            .unwrap();
        let path = dir.join(uri);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let playlist = dir.join("index.m3u8");
    std::fs::write(&playlist, &text).unwrap();
    tokio::task::spawn_blocking(move || {
        ffmpeg_next::init().unwrap();
        let mut ictx = ffmpeg_next::format::input(&playlist).expect("the playlist opens");
        let video = ictx
            .streams()
            .best(ffmpeg_next::media::Type::Video)
            .map(|s| s.index());
        let audio = ictx
            .streams()
            .best(ffmpeg_next::media::Type::Audio)
            .map(|s| s.index());
        let (mut frames, mut audio_packets) = (0u64, 0u64);
        let mut last = std::collections::HashMap::new();
        for (s, p) in ictx.packets() {
            let dts = p.dts().expect("a decode time");
            let prev = last.insert(s.index(), dts);
            assert!(
                prev.is_none_or(|d| dts > d),
                "decode time goes back in stream {}",
                s.index()
            );
            if Some(s.index()) == video {
                frames += 1;
            } else if Some(s.index()) == audio {
                audio_packets += 1;
            }
        }
        (frames, audio_packets)
    })
    .await
    .unwrap()
}

pub struct TestApp {
    pub client: Client,
    pub pool: PgPool,
    pub store: ObjectStore,
    pub broker: BrokerClient,
    pub worker: Worker,
    pub cfg: Config,
    /// The `VTX_*` settings this app runs with, for child processes.
    pub env: Vec<(String, String)>,
    stack: Stack,
    /// Disarms the watchdog when the app is stopped or dropped.
    _watchdog: mpsc::Sender<()>,
}

/// How long one test's app may live (`VTX_TEST_WATCHDOG_SECS`, default 20 minutes): a test
/// that hangs (a dependency's client stuck in an await with no timeout, say) then ends the
/// test binary with a message instead of running CI out of time.
fn watchdog(tag: &str) -> mpsc::Sender<()> {
    let limit = std::env::var("VTX_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    let (tx, rx) = mpsc::channel::<()>();
    let tag = tag.to_string();
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(limit)) {
            progress(&format!(
                "watchdog: {test} (app {tag}) still running after {limit} s; aborting the test \
                 binary. Worker process logs: {}/vtx-test-*.log",
                std::env::temp_dir().display()
            ));
            std::process::abort();
        }
    });
    tx
}

/// A progress line straight to stderr, bypassing the test harness's capture (lost when a
/// hanging test binary is aborted).
pub fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Which services run inside the test process.
#[derive(Clone, Copy)]
pub struct Services {
    pub worker: bool,
    pub scheduler: bool,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            worker: true,
            scheduler: true,
        }
    }
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, &[], Services::default()).await
    }

    /// Starts the services with extra `VTX_*` settings.
    pub async fn spawn_with(pool: PgPool, settings: &[(&str, &str)], services: Services) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("VTX_TEST_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let watchdog = watchdog(&tag);
        let opts = pool.connect_options();
        let database_url = format!(
            "postgres://{}:{}@{}:{}/{}",
            std::env::var("VTX_TEST_DB_USER").unwrap_or_else(|_| "vtx".into()),
            std::env::var("VTX_TEST_DB_PASSWORD").unwrap_or_else(|_| "vtx".into()),
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("vtx")
        );
        let mut env: Vec<(String, String)> = vec![
            ("VTX_DATABASE_URL".into(), database_url),
            ("VTX_HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("VTX_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("VTX_QUEUE_PREFIX".into(), format!("test-{tag}")),
            ("VTX_S3_PREFIX".into(), format!("test-{tag}/")),
            // Short leases and grace so that tests see reaping and collection quickly.
            // The gateway checks chunks in `vtx inspect-chunk` children (not this test binary).
            (
                "VTX_INSPECT_PROGRAM".into(),
                vtx_binary().display().to_string(),
            ),
            ("VTX_LEASE_SECS".into(), "6".into()),
            ("VTX_SWAP_GRACE_SECS".into(), "2".into()),
            (
                "VTX_SERVICE_TOKEN".into(),
                format!("svc-{}", uuid::Uuid::new_v4().simple()),
            ),
        ];
        for (k, v) in settings {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let cfg = Config::from_lookup(|k| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        })
        .expect("test configuration");

        let resources = Resources::with_pool(&cfg, pool.clone());
        resources
            .store
            .ensure_bucket()
            .await
            .expect("S3 server up (run deploy/local/setup.sh)");
        resources
            .broker
            .check()
            .await
            .expect("RabbitMQ up (run deploy/local/setup.sh)");
        let Resources { store, broker, .. } = resources.clone();
        let roles = Roles {
            gateway: true,
            scheduler: services.scheduler,
            worker: services.worker,
            ..Roles::default()
        };
        let stack = Stack::start(&cfg, resources, roles)
            .await
            .expect("the services start");
        // The test's own handle on a worker (some tests run its handler directly).
        let worker = match &stack.worker {
            Some(w) => w.clone(),
            None => Worker::new(
                pool.clone(),
                store.clone(),
                cfg.worker.clone(),
                cfg.pipeline.clone(),
                cfg.hotness.clone(),
            ),
        };
        let client = Client::new(stack.gateway_url().expect("a gateway"))
            .with_token(cfg.auth.service_tokens[0].expose())
            .with_cutter(vtx_chunker::cutter());
        TestApp {
            client,
            pool,
            store,
            broker,
            worker,
            cfg,
            env,
            stack,
            _watchdog: watchdog,
        }
    }

    /// Starts a `vtx worker` process on this app's database, queues and bucket prefix.
    pub fn spawn_worker_process(&self, name: &str) -> Child {
        self.spawn_process(name, "worker", &[])
    }

    /// Starts `vtx <command>` on this app's settings, with `overrides`; its log goes to
    /// `vtx-test-<name>.log` in the temporary directory.
    pub fn spawn_process(&self, name: &str, command: &str, overrides: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(std::env::temp_dir().join(format!("vtx-test-{name}.log")))
            .expect("log file");
        Command::new(vtx_binary())
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(overrides.iter().copied())
            .env("VTX_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("vtx binary runs")
    }

    /// Stops the services and deletes this test's queues.
    pub async fn stop(self) {
        let stopped = tokio::time::timeout(Duration::from_secs(180), self.stack.stop()).await;
        assert!(
            stopped.is_ok(),
            "the services did not stop within 180 s of shutdown"
        );
        if let Ok(b) = self.broker.get().await {
            let _ = b.delete_topology().await;
        }
    }
}

/// The `vtx` binary built beside the test binary (cargo builds workspace binaries for tests).
pub fn vtx_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("vtx");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bin vtx` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Kills a child process group member for good.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
