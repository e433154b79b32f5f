//! Chaos: a worker killed mid-slice, RabbitMQ restarted mid-job, PostgreSQL restarted mid-job;
//! and every service on a host of its own (network namespaces), one worker's link cut mid-slice.
//! Every job still finishes with every frame, nothing is left stuck, and no duplicate output is
//! visible. Restarting the shared services and making namespaces need root (CI has it);
//! elsewhere these tests say so and pass without running. They run one at a time.
//!
//! One test binary of its own: cargo runs test binaries one at a time, so these restarts never
//! disturb the other suites.

use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use vtx_client::Client;
use vtx_domain::api::UploadCompleted;
use vtx_media::{Deadline, Limits, probe};
use vtx_tests::{ChildGuard, Services, TestApp, looped, progress};

const WITHIN: Duration = Duration::from_secs(300);

/// Runs an administrative command, given at most two minutes.
fn run(cmd: &str, args: &[&str]) {
    progress(&format!("chaos: {cmd} {}", args.join(" ")));
    let st = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn postgres_version() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("Debian PostgreSQL layout")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    v.sort();
    v.pop().expect("a PostgreSQL cluster")
}

/// Waits until some slice of `job` is running; returns its lease owner.
async fn running_slice(pool: &PgPool, job: &UploadCompleted, tier: &str) -> String {
    let until = std::time::Instant::now() + WITHIN;
    loop {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT lease_owner FROM slices WHERE job_id = $1 AND tier = $2 AND state = 'running' LIMIT 1",
        )
        .bind(job.job_id.as_uuid())
        .bind(tier)
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
        if let Some((owner,)) = row {
            return owner;
        }
        assert!(std::time::Instant::now() < until, "no slice ever ran");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Uploads `clip` and waits until one of `workers` runs a high-tier slice of it: the upload,
/// and which worker holds the slice.
async fn upload_until_a_worker_holds_a_slice(
    pool: &PgPool,
    client: &Client,
    clip: &std::path::Path,
    workers: &[ChildGuard],
) -> (UploadCompleted, usize) {
    let job = client
        .upload_file(clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let owner = running_slice(pool, &job, "high").await;
    let holder = workers
        .iter()
        .position(|w| owner.contains(&format!("-{}-", w.0.id())))
        .expect("the lease names a worker process");
    (job, holder)
}

/// The job finished: high tier live, every rendition holds every frame, one set of renditions
/// per tier, no slice left running.
async fn assert_finished(
    app: &TestApp,
    client: &Client,
    job: &UploadCompleted,
    frames: u64,
    rungs: usize,
) {
    let v = client
        .wait_for_tier(job.video_id, "high", WITHIN)
        .await
        .unwrap();
    assert_eq!(v.state, "published");
    let dir = tempfile::tempdir().unwrap();
    let playback = v.playback.unwrap();
    assert_eq!(playback.mp4.len(), rungs);
    for r in &playback.mp4 {
        let path = dir.path().join(&r.name);
        client.download(&r.url, &path).await.unwrap();
        assert_eq!(
            probe(&path, &Limits::default(), Deadline::none())
                .unwrap()
                .video
                .frames,
            frames,
            "{}",
            r.name
        );
    }
    let j = client.job(job.job_id).await.unwrap();
    assert_eq!(j.state, "succeeded", "{j:?}");
    let per_tier: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tier, count(*) FROM renditions WHERE video_id = $1 GROUP BY tier ORDER BY tier",
    )
    .bind(job.video_id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        per_tier,
        vec![
            ("fast".to_string(), rungs as i64),
            ("high".to_string(), rungs as i64)
        ]
    );
    let stuck: (i64,) =
        sqlx::query_as("SELECT count(*) FROM slices WHERE job_id = $1 AND state <> 'done'")
            .bind(job.job_id.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stuck.0, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn jobs_survive_a_killed_worker_and_restarts_of_rabbitmq_and_postgresql(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("chaos test skipped: restarting RabbitMQ and PostgreSQL needs root");
        return;
    }
    // The sliced fast tier (what tus uploads and whole-file sources take); a chunk encode's
    // worker killed mid-way is tested in tests/pipeline.rs.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_SLICE_SECONDS", "4"), ("VTX_LIVE_INGEST", "false")],
        Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let mut workers = vec![
        ChildGuard(app.spawn_worker_process("chaos-a")),
        ChildGuard(app.spawn_worker_process("chaos-b")),
    ];
    let clip = looped("bikes.mp4", 3);
    let source = probe(&clip, &Limits::default(), Deadline::none()).unwrap();
    // The ladder the source's size and bitrate allow (never inflate drops bikes' 240p).
    let rungs = vtx_domain::plan_ladder_within(
        source.video.display_width,
        source.video.display_height,
        &vtx_domain::LadderLimits::for_source(source.video.bitrate),
    )
    .len();
    let client = app.client.clone();

    // 1. kill -9 the worker holding a high-tier slice.
    progress("chaos: 1. a worker killed mid-slice");
    let (job, victim) =
        upload_until_a_worker_holds_a_slice(&app.pool, &client, &clip, &workers).await;
    let victim = &mut workers[victim];
    victim.0.kill().unwrap();
    let _ = victim.0.wait();
    workers.push(ChildGuard(app.spawn_worker_process("chaos-c")));
    assert_finished(&app, &client, &job, source.video.frames, rungs).await;
    let retried: (i64,) =
        sqlx::query_as("SELECT count(*) FROM slices WHERE job_id = $1 AND attempts > 1")
            .bind(job.job_id.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(retried.0 >= 1, "the killed worker's slice was redone");

    // 2. Restart RabbitMQ while the fast tier encodes.
    progress("chaos: 2. RabbitMQ restarted mid-job");
    let job = client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    running_slice(&app.pool, &job, "fast").await;
    run("rabbitmqctl", &["-q", "stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    run("rabbitmqctl", &["-q", "start_app"]);
    run("rabbitmqctl", &["-q", "await_startup"]);
    assert_finished(&app, &client, &job, source.video.frames, rungs).await;

    // 3. Restart PostgreSQL while the high tier encodes.
    progress("chaos: 3. PostgreSQL restarted mid-job");
    let job = client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    running_slice(&app.pool, &job, "high").await;
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &postgres_version(),
            "main",
            "restart",
        ],
    );
    assert_finished(&app, &client, &job, source.video.frames, rungs).await;

    // Nothing was given up on along the way.
    progress("chaos: checking the dead letters and stopping");
    let broker = app.broker.get().await.unwrap();
    assert!(
        broker
            .get_one(vtx_domain::messages::queue::DEAD)
            .await
            .unwrap()
            .is_none()
    );
    drop(workers);
    app.stop().await;
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// One chaos test at a time: the other restarts the services this one reaches.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A network namespace joined to the host by a veth pair: the host end is `host_ip`, the
/// namespace's `ns_ip`. Deleted on drop.
struct Host {
    ns: String,
    link: String,
    host_ip: String,
    ns_ip: String,
}

impl Host {
    fn new(tag: &str, index: u8, subnet: u8) -> Self {
        let (ns, link, peer) = (
            format!("vtx{tag}{index}"),
            format!("vtx{tag}h{index}"),
            format!("vtx{tag}n{index}"),
        );
        let host_ip = format!("10.{subnet}.{index}.1");
        let ns_ip = format!("10.{subnet}.{index}.2");
        let ip = |args: &[&str]| run("ip", args);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host {
            ns,
            link,
            host_ip,
            ns_ip,
        }
    }

    /// `vtx <command>` in this namespace, on `env`, reaching the services at the host end.
    fn spawn(&self, name: &str, command: &str, env: &[(String, String)]) -> ChildGuard {
        let log = std::fs::File::create(std::env::temp_dir().join(format!("vtx-test-{name}.log")))
            .expect("log file");
        ChildGuard(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(vtx_tests::vtx_binary())
                .arg(command)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("VTX_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("ip netns exec runs"),
        )
    }

    /// Cuts the link: nothing goes in or out of the namespace any more.
    fn cut(&self) {
        run("ip", &["link", "set", &self.link, "down"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Forwards every connection to `0.0.0.0:<returned port>` to `target` on the host's loopback,
/// where PostgreSQL, RabbitMQ and the S3 server listen: the namespaces reach them over their
/// veth links.
async fn forward(target: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_cut_off_the_network_mid_slice_is_replaced_by_another_host(pool: PgPool) {
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("network namespace test skipped: it needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    // The in-process app only provides the database and settings: every service runs as a
    // process in a namespace of its own.
    let app = TestApp::spawn_with(
        pool.clone(),
        &[("VTX_SLICE_SECONDS", "4"), ("VTX_LIVE_INGEST", "false")],
        Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let (pg, mq, s3) = (
        forward(5432).await,
        forward(5672).await,
        forward(9000).await,
    );
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let subnet = 100 + (std::process::id() % 100) as u8;
    let hosts: Vec<Host> = (1..=4).map(|i| Host::new(&tag, i, subnet)).collect();
    let database = pool
        .connect_options()
        .get_database()
        .unwrap_or("vtx")
        .to_string();
    let env_for = |h: &Host| -> Vec<(String, String)> {
        let mut env = app.env.clone();
        let over = [
            (
                "VTX_DATABASE_URL",
                format!("postgres://vtx:vtx@{}:{pg}/{database}", h.host_ip),
            ),
            (
                "VTX_AMQP_URL",
                format!("amqp://guest:guest@{}:{mq}/%2f", h.host_ip),
            ),
            ("VTX_S3_ENDPOINT", format!("http://{}:{s3}", h.host_ip)),
            ("VTX_HTTP_ADDR", format!("{}:8080", h.ns_ip)),
            ("VTX_PUBLIC_URL", format!("http://{}:8080", h.ns_ip)),
            ("VTX_METRICS_ADDR", format!("{}:9464", h.ns_ip)),
        ];
        env.retain(|(k, _)| !over.iter().any(|(o, _)| o == k));
        env.extend(over.into_iter().map(|(k, v)| (k.to_string(), v)));
        env
    };
    let _gateway = hosts[0].spawn("hosts-gateway", "gateway", &env_for(&hosts[0]));
    let _scheduler = hosts[1].spawn("hosts-scheduler", "scheduler", &env_for(&hosts[1]));
    let mut workers = [
        hosts[2].spawn("hosts-worker-a", "worker", &env_for(&hosts[2])),
        hosts[3].spawn("hosts-worker-b", "worker", &env_for(&hosts[3])),
    ];
    let client = Client::new(format!("http://{}:8080", hosts[0].ns_ip))
        .with_token(app.cfg.auth.service_tokens[0].expose())
        .with_cutter(vtx_chunker::cutter());
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while client
        .http()
        .get(format!("{}/readyz", client.base()))
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < until,
            "the gateway never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let clip = looped("bikes.mp4", 3);
    let source = probe(&clip, &Limits::default(), Deadline::none()).unwrap();
    // The ladder the source's size and bitrate allow (never inflate drops bikes' 240p).
    let rungs = vtx_domain::plan_ladder_within(
        source.video.display_width,
        source.video.display_height,
        &vtx_domain::LadderLimits::for_source(source.video.bitrate),
    )
    .len();
    // A high-tier slice is running on one of the workers: cut that worker's host off.
    let (job, victim) =
        upload_until_a_worker_holds_a_slice(&app.pool, &client, &clip, &workers).await;
    progress(&format!("hosts: cutting worker {victim}'s link mid-slice"));
    hosts[2 + victim].cut();
    assert_finished(&app, &client, &job, source.video.frames, rungs).await;
    let redone: Vec<(String,)> = sqlx::query_as(
        "SELECT finished_by FROM slices WHERE job_id = $1 AND attempts > 1 AND state = 'done'",
    )
    .bind(job.job_id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let survivor = workers[1 - victim].0.id();
    assert!(
        redone
            .iter()
            .any(|(by,)| by.contains(&format!("-{survivor}-"))),
        "the cut worker's slice was redone by the other: {redone:?}"
    );
    for w in &mut workers {
        let _ = w.0.kill();
    }
    drop(hosts);
    app.stop().await;
}
