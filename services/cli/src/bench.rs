//! `vtx bench media`: the media engine against itself and against the `ffmpeg` command line.
//! Prints a Markdown table; the results and the command live in docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use vtx_domain::{Rung, plan_ladder};
use vtx_media::{
    Deadline, Limits, PipelineRequest, RenditionOutput, Tier, TranscodeRequest, VideoCodec,
    measure, probe, run_pipeline, transcode_ladder,
};

/// Wall and CPU seconds (this process and its children) of one run.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
}

fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        total += tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    total
}

fn measure_cost<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Cost, T)> {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let out = f()?;
    Ok((
        Cost {
            wall: t0.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - c0,
        },
        out,
    ))
}

fn ffmpeg(args: &[String]) -> anyhow::Result<()> {
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .context("running the ffmpeg command line (deploy/local/setup.sh installs it)")?;
    if !st.success() {
        bail!("ffmpeg {args:?} failed");
    }
    Ok(())
}

/// A 720p clip of at least 30 s: the shared Big Buck Bunny excerpt looped without re-encoding.
fn default_input(dir: &Path) -> anyhow::Result<PathBuf> {
    looped_bbb(dir, 6) // 31.7 s
}

/// The ffmpeg command line's equivalent of our fast-tier x264 settings for one rung.
fn cli_x264_args(rung: &Rung, gop: u32, threads: Option<usize>) -> Vec<String> {
    let mut a: Vec<String> = [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-crf",
        "23",
        "-bf",
        "2",
        "-pix_fmt",
        "yuv420p",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "-maxrate".into(),
        rung.max_bitrate.to_string(),
        "-bufsize".into(),
        (rung.max_bitrate * 2).to_string(),
        "-x264-params".into(),
        format!("keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"),
        "-an".into(),
    ]);
    if let Some(t) = threads {
        a.extend(["-threads".into(), t.to_string()]);
    }
    a
}

pub fn media(input: Option<PathBuf>, jobs: usize) -> anyhow::Result<()> {
    vtx_media::init();
    let scratch = tempfile::tempdir()?;
    let input = match input {
        Some(p) => p,
        None => default_input(scratch.path())?,
    };
    let p = probe(&input, &Limits::default(), Deadline::none())?;
    let ladder: Vec<Rung> = plan_ladder(p.video.display_width, p.video.display_height)
        .into_iter()
        .rev()
        .take(4)
        .rev()
        .collect();
    let gop = (2.0 * p.video.frame_rate).round() as u32;
    let fps = p.video.frame_rate;
    println!(
        "input: {} ({}x{}, {:.1} s, {} frames, {} fps), {} cores",
        input.display(),
        p.video.width,
        p.video.height,
        p.video.duration_seconds,
        p.video.frames,
        fps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = scratch.path();
    let outputs = |tag: &str, rungs: &[Rung]| -> Vec<RenditionOutput> {
        rungs
            .iter()
            .map(|r| RenditionOutput {
                rung: r.clone(),
                codec: VideoCodec::H264,
                path: dir.join(format!("{tag}-{}.mp4", r.name)),
            })
            .collect()
    };
    let ladder_req = |tag: &str, rungs: &[Rung]| {
        let mut r = TranscodeRequest::new(&input, outputs(tag, rungs), Tier::Fast);
        r.audio = false;
        r
    };

    // (a) one decode feeding the ladder vs one decode per rung.
    let (shared, _) = measure_cost(|| Ok(transcode_ladder(&ladder_req("shared", &ladder))?))?;
    let (separate, _) = measure_cost(|| {
        for r in &ladder {
            transcode_ladder(&ladder_req("separate", std::slice::from_ref(r)))?;
        }
        Ok(())
    })?;

    // (b) the same ladder on the ffmpeg command line: one decode, split, scale, encode.
    let mut graph = format!("[0:v]split={}", ladder.len());
    for i in 0..ladder.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.iter().enumerate() {
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic[o{i}]",
            r.width, r.height
        ));
    }
    let mut args: Vec<String> = vec![
        "-i".into(),
        input.to_string_lossy().into_owned(),
        "-filter_complex".into(),
        graph,
    ];
    for (i, r) in ladder.iter().enumerate() {
        args.extend(["-map".into(), format!("[o{i}]")]);
        args.extend(cli_x264_args(r, gop, None));
        args.push(
            dir.join(format!("cli-{}.mp4", r.name))
                .to_string_lossy()
                .into_owned(),
        );
    }
    let (cli, _) = measure_cost(|| ffmpeg(&args))?;

    // (c) slices on P single-threaded workers vs one single-threaded monolithic encode.
    let sliced_dir = dir.join("sliced");
    let mono_dir = dir.join("mono");
    let pipeline = |out: &Path, slice_seconds: f64, jobs: usize| {
        let mut r = PipelineRequest::new(&input, out);
        r.slice_seconds = slice_seconds;
        r.jobs = jobs;
        r.threads = Some(1);
        r.quality = false;
        r.hls = false;
        r
    };
    // Three slices per worker, so that uneven slice lengths even out across rounds.
    let slice_seconds = (p.video.duration_seconds / (jobs as f64 * 3.0)).max(1.0);
    let (sliced, sm) =
        measure_cost(|| Ok(run_pipeline(&pipeline(&sliced_dir, slice_seconds, jobs))?))?;
    let (mono, mm) = measure_cost(|| Ok(run_pipeline(&pipeline(&mono_dir, 0.0, 1))?))?;
    let top =
        |m: &vtx_media::Manifest, d: &Path| d.join(&m.renditions.last().expect("a rung").file);
    let q = measure(
        &input,
        p.video.rotation,
        &[top(&sm, &sliced_dir), top(&mm, &mono_dir)],
        Deadline::none(),
    )?;

    let frames = p.video.frames as f64;
    println!();
    println!("| run | wall s | CPU s | fps | vs baseline |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let row = |name: &str, c: Cost, note: String| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} | {note} |",
            c.wall,
            c.cpu,
            frames / c.wall
        );
    };
    row(
        &format!("(a) vtx: one decode -> {}-rung ladder", ladder.len()),
        shared,
        format!(
            "{:.1}% less wall, {:.1}% less CPU than (a) separate",
            (1.0 - shared.wall / separate.wall) * 100.0,
            (1.0 - shared.cpu / separate.cpu) * 100.0
        ),
    );
    row(
        &format!("(a) vtx: {} separate decode+encode runs", ladder.len()),
        separate,
        "baseline".into(),
    );
    row(
        "(b) ffmpeg CLI: -filter_complex split, same x264 settings",
        cli,
        format!(
            "vtx ladder takes {:+.1}% wall vs the CLI",
            (shared.wall / cli.wall - 1.0) * 100.0
        ),
    );
    row(
        &format!(
            "(c) vtx: {} slices on {jobs} single-threaded workers",
            sm.slices
        ),
        sliced,
        format!(
            "speed-up {:.2}x (target >= {:.2}x), top rung PSNR {:.3} dB",
            mono.wall / sliced.wall,
            0.9 * jobs as f64,
            q[0].psnr
        ),
    );
    row(
        "(c) vtx: monolithic, one single-threaded worker",
        mono,
        format!(
            "top rung PSNR {:.3} dB; stitched: {:+.3} dB at {:+.1}% bytes",
            q[1].psnr,
            q[0].psnr - q[1].psnr,
            (sm.renditions.last().expect("a rung").bytes as f64
                / mm.renditions.last().expect("a rung").bytes as f64
                - 1.0)
                * 100.0
        ),
    );
    Ok(())
}

/// A throwaway vtx on the local services: its own database (dropped at the end), queue prefix
/// and bucket prefix; gateway, scheduler and outbox relay in this process, workers as processes.
struct BenchStack {
    client: vtx_client::Client,
    pool: sqlx::PgPool,
    store: vtx_infra::ObjectStore,
    env: Vec<(String, String)>,
    admin: sqlx::PgPool,
    database: String,
    broker: vtx_infra::broker::BrokerClient,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl BenchStack {
    async fn start(tiers: &str) -> anyhow::Result<Self> {
        use vtx_infra::{Config, ObjectStore, db};
        let base = Config::from_env()?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database = format!("vtx_bench_{tag}");
        let admin = sqlx::PgPool::connect(base.database_url.expose()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await?;
        let url = match base.database_url.expose().rsplit_once('/') {
            Some((server, _)) => format!("{server}/{database}"),
            None => anyhow::bail!("VTX_DATABASE_URL has no database name"),
        };
        let env: Vec<(String, String)> = vec![
            ("VTX_DATABASE_URL".into(), url),
            ("VTX_QUEUE_PREFIX".into(), format!("bench-{tag}")),
            ("VTX_S3_PREFIX".into(), format!("bench-{tag}/")),
            ("VTX_HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("VTX_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("VTX_TIERS".into(), tiers.into()),
            (
                "VTX_SERVICE_TOKEN".into(),
                format!("bench-{}", uuid::Uuid::new_v4().simple()),
            ),
        ];
        let cfg = Config::from_lookup(|k| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        })?;
        let pool = db::connect(&cfg).await?;
        db::migrate(&pool).await?;
        let store = ObjectStore::new(&cfg.s3, &cfg.tls_roots);
        store.ensure_bucket().await?;
        let broker = vtx_infra::broker::BrokerClient::new(
            cfg.amqp_url.clone(),
            cfg.queue_prefix.clone(),
            cfg.tls_roots.clone(),
        );
        broker.check().await?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(vtx_infra::outbox::run_relay(
            pool.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        let scheduler = vtx_scheduler::Scheduler::new(
            pool.clone(),
            store.clone(),
            broker.clone(),
            cfg.pipeline.clone(),
            &cfg.worker,
        );
        tasks.spawn(scheduler.run(shutdown.clone()));
        let gw =
            vtx_gateway::Gateway::build(&cfg, pool.clone(), store.clone(), broker.clone()).await?;
        let client = vtx_client::Client::new(gw.public_url())
            .with_token(cfg.auth.service_tokens[0].expose());
        let token = shutdown.clone();
        tasks.spawn(async move {
            let _ = gw.run_until(token).await;
        });
        Ok(Self {
            client,
            pool,
            store,
            env,
            admin,
            database,
            broker,
            shutdown,
            tasks,
        })
    }

    /// Starts `n` worker processes and waits until they consume fast slices.
    async fn workers(&self, n: usize) -> anyhow::Result<Vec<ChildGuard>> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        // Each worker pinned to a core of its own, as if it were a one-core machine: otherwise
        // one worker already uses every core here and a second one has nothing to add.
        let pin = Command::new("taskset").arg("-V").output().is_ok();
        for i in 0..n {
            let mut cmd = if pin {
                let mut c = Command::new("taskset");
                c.args(["-c", &i.to_string()]).arg(&exe);
                c
            } else {
                Command::new(&exe)
            };
            let child = cmd
                .arg("worker")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("VTX_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?;
            children.push(ChildGuard(child));
        }
        let broker = self.broker.get().await?;
        let until = Instant::now() + std::time::Duration::from_secs(30);
        while broker
            .queue_stats(vtx_domain::messages::queue::FAST_SLICES)
            .await?
            .1
            < n as u32
        {
            anyhow::ensure!(Instant::now() < until, "workers did not start");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(children)
    }

    /// Uploads `clip`; returns (seconds from upload complete to published, the job id).
    async fn publish_latency(&self, clip: &Path) -> anyhow::Result<(f64, vtx_domain::JobId)> {
        let done = self
            .client
            .upload_file(clip, &Default::default(), &|_, _| {})
            .await?;
        let t0 = Instant::now();
        self.wait_published(done.video_id).await?;
        Ok((t0.elapsed().as_secs_f64(), done.job_id))
    }

    /// Polls every 50 ms (finer than the client's wait) until the video is published.
    async fn wait_published(&self, video: vtx_domain::VideoId) -> anyhow::Result<()> {
        let until = Instant::now() + std::time::Duration::from_secs(1800);
        loop {
            let v = self.client.video(video).await?;
            match v.state.as_str() {
                "published" => return Ok(()),
                "failed" => bail!("video failed: {:?}", v.error),
                _ => {}
            }
            anyhow::ensure!(Instant::now() < until, "not published in 30 min");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A `vtx gateway` process on this stack (so that its memory can be measured apart), and
    /// a client of it with the service token.
    async fn gateway_process(&self) -> anyhow::Result<(ChildGuard, vtx_client::Client)> {
        use std::io::BufRead;
        let mut child = ChildGuard(
            Command::new(std::env::current_exe()?)
                .arg("gateway")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("VTX_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        );
        let stdout = child.0.stdout.take().context("gateway stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let url = line
            .trim()
            .strip_prefix("vtx gateway on ")
            .with_context(|| format!("unexpected gateway output {line:?}"))?
            .to_string();
        Ok((
            child,
            vtx_client::Client::new(url).with_token(self.service_token()?),
        ))
    }

    /// The service token the stack's processes accept.
    fn service_token(&self) -> anyhow::Result<String> {
        self.env
            .iter()
            .find(|(k, _)| k == "VTX_SERVICE_TOKEN")
            .map(|(_, v)| v.clone())
            .context("service token")
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.delete_prefix("").await {
            eprintln!("could not delete the bench objects: {e}");
        }
        if let Ok(b) = self.broker.get().await {
            let _ = b.delete_topology().await;
        }
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .execute(&self.admin)
        .await;
    }
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A clip from the shared media folder beside the checkout.
fn shared_clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/media")
        .join(name)
}

/// The shared 720p Big Buck Bunny excerpt, `loops` times back to back (no re-encode), in `dir`.
fn looped_bbb(dir: &Path, loops: u32) -> anyhow::Result<PathBuf> {
    loop_clip(&shared_clip("bigbuckbunny.mp4"), dir, loops)
}

/// The shared 720p clip as a phone records it: re-encoded once with a keyframe every second
/// (the source has one per 5.28 s), audio copied.
fn phone_like_bbb(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("bbb-gop1s.mp4");
    if !out.exists() {
        ffmpeg(&[
            "-i".into(),
            shared_clip("bigbuckbunny.mp4")
                .to_string_lossy()
                .into_owned(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "veryfast".into(),
            "-crf".into(),
            "20".into(),
            "-g".into(),
            "25".into(),
            "-keyint_min".into(),
            "25".into(),
            "-sc_threshold".into(),
            "0".into(),
            "-c:a".into(),
            "copy".into(),
            out.to_string_lossy().into_owned(),
        ])?;
    }
    Ok(out)
}

/// `clip` played `loops` times over, without re-encoding.
fn loop_clip(clip: &Path, dir: &Path, loops: u32) -> anyhow::Result<PathBuf> {
    let stem = clip
        .file_stem()
        .map_or("clip".into(), |s| s.to_string_lossy());
    let out = dir.join(format!("{stem}-x{loops}.mp4"));
    ffmpeg(&[
        "-stream_loop".into(),
        (loops - 1).to_string(),
        "-i".into(),
        clip.to_string_lossy().into_owned(),
        "-c".into(),
        "copy".into(),
        out.to_string_lossy().into_owned(),
    ])?;
    Ok(out)
}

/// `vtx bench pipeline`: publish latency by clip length, and a long video on 1 vs 2 workers.
pub async fn pipeline() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut clips = Vec::new();
    for (label, loops) in [("15 s", 3u32), ("60 s", 12), ("5 min", 57)] {
        clips.push((label, looped_bbb(scratch.path(), loops)?));
    }
    println!(
        "720p clips (the shared Big Buck Bunny excerpt looped), fast tier only; each worker process pinned to one core"
    );
    println!();
    println!(
        "| clip | workers | slices | upload complete -> published, s | planning s | encoding s | merging s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut long = Vec::new();
    for workers in [2usize, 1] {
        let stack = BenchStack::start("fast").await?;
        let _w = stack.workers(workers).await?;
        for (label, clip) in &clips {
            if workers == 1 && *label != "5 min" {
                continue;
            }
            let (secs, job) = stack.publish_latency(clip).await?;
            let view = stack.client.job(job).await?;
            let fast = view.tiers.first();
            let ms =
                |v: Option<u64>| v.map_or("-".to_string(), |m| format!("{:.1}", m as f64 / 1000.0));
            println!(
                "| {label} | {workers} | {} | {secs:.1} | {} | {} | {} |",
                fast.map_or(0, |t| t.slices_total),
                ms(view.planning_ms),
                ms(fast.and_then(|t| t.encode_ms)),
                ms(fast.and_then(|t| t.merge_ms)),
            );
            if *label == "5 min" {
                long.push((workers, secs));
            }
        }
        stack.stop().await;
    }
    if let [(2, two), (1, one)] = long[..] {
        println!();
        println!(
            "5-minute video: 1 worker {one:.1} s, 2 workers {two:.1} s: speed-up {:.2}x",
            one / two
        );
    }
    Ok(())
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `vtx bench uploads`: `sessions` concurrent upload sessions on loopback against a `vtx
/// gateway` process, each sending `chunks` GOP-aligned chunks (real MPEG-TS chunks, checked by
/// the gateway as in production). Prints throughput, chunk latency and the gateway's peak RSS.
pub async fn uploads(sessions: usize, chunks: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let src = shared_clip("bikes.mp4");
    let cut = {
        let (src, dir) = (src.clone(), scratch.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            vtx_media::cut_chunks(&src, &dir, 2.0, Deadline::none())
        })
        .await??
    };
    let mut payloads = Vec::new();
    for c in &cut {
        payloads.push(bytes::Bytes::from(std::fs::read(&c.path)?));
    }
    anyhow::ensure!(
        chunks <= payloads.len(),
        "at most {} chunks per session",
        payloads.len()
    );
    let payloads = &payloads[..chunks];
    let per_session: u64 = payloads.iter().map(|p| p.len() as u64).sum();

    let stack = BenchStack::start("fast").await?;
    let (gateway, client) = stack.gateway_process().await?;
    let pid = gateway.0.id();
    let idle_rss = peak_rss(pid).unwrap_or(0);

    // Every session is opened first, then all of them send at once.
    let opened: Vec<_> =
        futures_util::future::try_join_all((0..sessions).map(|_| client.create_upload())).await?;
    let started = Instant::now();
    let latencies = std::sync::Mutex::new(Vec::with_capacity(sessions * chunks));
    let failures = std::sync::atomic::AtomicU64::new(0);
    futures_util::future::join_all(opened.iter().map(|up| {
        let session = client.with_token(up.upload_token.as_str());
        let (latencies, failures) = (&latencies, &failures);
        async move {
            for (i, data) in payloads.iter().enumerate() {
                let t = Instant::now();
                match session.put_chunk(up.id, i as u32, data.clone()).await {
                    Ok(_) => latencies
                        .lock()
                        .expect("latency lock")
                        .push(t.elapsed().as_secs_f64()),
                    Err(e) => {
                        if failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                            eprintln!("chunk failed: {e:#}");
                        }
                    }
                }
            }
        }
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let rss = peak_rss(pid).unwrap_or(0);
    drop(gateway);

    let mut lat = latencies.into_inner().expect("latency lock");
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let bytes = per_session * sessions as u64;
    println!(
        "| sessions | chunks | chunk size | stored | failed | wall s | MB/s | chunks/s | p50 ms | p99 ms | gateway peak RSS (idle) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {sessions} | {} | {} KiB | {} | {} | {wall:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} MiB ({} MiB) |",
        sessions * chunks,
        per_session / chunks as u64 / 1024,
        lat.len(),
        failures.load(std::sync::atomic::Ordering::Relaxed),
        bytes as f64 / wall / 1e6,
        lat.len() as f64 / wall,
        pct(0.5) * 1000.0,
        pct(0.99) * 1000.0,
        rss >> 20,
        idle_rss >> 20,
    );
    stack.stop().await;
    Ok(())
}

/// `vtx bench live`: `vtx upload --live` (chunks paced at the video's real-time rate, as a phone
/// still recording sends them) of a 60 s and a 5-minute clip; the publish latency after the
/// last chunk was stored, median over `runs` (`long_runs` for the 5-minute clip).
pub async fn live(runs: usize, long_runs: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let stack = BenchStack::start("fast").await?;
    let _w = stack.workers(2).await?;
    println!(
        "| source | clip | chunks | runs | last chunk -> published, s (median) | all runs, s |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    let sources = [
        (
            "phone-like: keyframe every 1 s",
            phone_like_bbb(scratch.path())?,
        ),
        (
            "shared clip as is: keyframe every 5.28 s",
            shared_clip("bigbuckbunny.mp4"),
        ),
    ];
    for (source, base) in &sources {
        for (label, loops, n) in [("60 s", 12u32, runs), ("5 min", 57, long_runs)] {
            if n == 0 {
                continue;
            }
            let clip = loop_clip(base, scratch.path(), loops)?;
            let opts = vtx_client::UploadOptions {
                live: true,
                ..Default::default()
            };
            let mut latencies = Vec::new();
            let mut chunks = 0;
            for _ in 0..n {
                let report = stack.client.upload_video(&clip, &opts, &|_, _| {}).await?;
                chunks = report.chunks;
                stack.wait_published(report.completed.video_id).await?;
                latencies.push(report.last_chunk_stored.elapsed().as_secs_f64());
            }
            let mut sorted = latencies.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "| {source} | {label} | {chunks} | {n} | {:.2} | {} |",
                sorted[sorted.len() / 2],
                latencies
                    .iter()
                    .map(|l| format!("{l:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    stack.stop().await;
    Ok(())
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `vtx bench hotness`: play events ingested by one gateway process (batches of `batch` from
/// `senders` connections for `seconds`), every one counted after the flush; then the top-x
/// query over synthetic history (`videos` videos x `minutes` per-minute counters).
pub async fn hotness(
    seconds: u64,
    batch: usize,
    senders: usize,
    videos: u32,
    minutes: u32,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let stack = BenchStack::start("fast").await?;
    // Published videos to play (rows only: counting plays needs no media).
    sqlx::query(
        "INSERT INTO videos (id, state, source_key, source_bytes, live_tier, published_at)
         SELECT gen_random_uuid(), 'published', 'none', 0, 'fast', now()
         FROM generate_series(1, $1)",
    )
    .bind(i64::from(videos))
    .execute(&stack.pool)
    .await?;
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM videos")
        .fetch_all(&stack.pool)
        .await?;
    let (gateway, client) = stack.gateway_process().await?;
    let pid = gateway.0.id();
    let token = stack.service_token()?;
    // Bodies made up front, so the load generator spends its time sending. Plays are spread
    // over the videos head-heavily, as real traffic is.
    let bodies: Vec<bytes::Bytes> = (0..32)
        .map(|b| {
            let plays: Vec<vtx_domain::api::PlayEvent> = (0..batch)
                .map(|i| {
                    let k = (i * 7919 + b * 104_729) % (ids.len() * ids.len()).max(1);
                    let v = ((k as f64).sqrt() as usize).min(ids.len() - 1);
                    vtx_domain::api::PlayEvent {
                        video_id: ids[v].0.to_string(),
                        at: None,
                        client: None,
                    }
                })
                .collect();
            serde_json::to_vec(&vtx_domain::api::PlaysRequest { plays }).map(bytes::Bytes::from)
        })
        .collect::<Result<_, _>>()?;
    let url = format!("{}/v1/plays", client.base());
    let accepted = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let until = started + std::time::Duration::from_secs(seconds);
    futures_util::future::join_all((0..senders).map(|s| {
        let (http, url, token, bodies) = (client.http().clone(), &url, &token, &bodies);
        let (accepted, failed) = (&accepted, &failed);
        async move {
            let mut i = s;
            while Instant::now() < until {
                let resp = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let body: vtx_domain::api::PlaysAccepted =
                            r.json().await.unwrap_or_default();
                        accepted.fetch_add(u64::from(body.accepted), Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += senders;
            }
        }
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let accepted = accepted.load(Ordering::Relaxed);
    // Every accepted play is counted once the flush has run.
    let flush_until = Instant::now() + std::time::Duration::from_secs(30);
    let counted = loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COALESCE(sum(plays), 0)::bigint FROM play_counts")
                .fetch_one(&stack.pool)
                .await?;
        if n as u64 >= accepted || Instant::now() > flush_until {
            break n as u64;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts")
        .fetch_one(&stack.pool)
        .await?;
    let rss = peak_rss(pid).unwrap_or(0);
    drop(gateway);
    println!("### Play ingest (one gateway process)");
    println!();
    println!(
        "| senders | batch | seconds | plays accepted | failed requests | plays/s | gateway CPU s per 100k plays | counted after flush | rows written | gateway peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {senders} | {batch} | {wall:.1} | {accepted} | {} | {:.0} | {:.2} | {counted} | {} | {} MiB |",
        failed.load(Ordering::Relaxed),
        accepted as f64 / wall,
        cpu / (accepted.max(1) as f64 / 100_000.0),
        rows.0,
        rss >> 20
    );

    // Top-x over synthetic history: `minutes` per-minute counters for every video.
    sqlx::query(
        "INSERT INTO play_counts (video_id, minute, plays)
         SELECT v.id, date_trunc('minute', now()) - make_interval(mins => m),
                (random() * 100)::bigint
         FROM videos v, generate_series(1, $1) m
         ON CONFLICT DO NOTHING",
    )
    .bind(i32::try_from(minutes)?)
    .execute(&stack.pool)
    .await?;
    sqlx::query("ANALYZE play_counts")
        .execute(&stack.pool)
        .await?;
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts")
        .fetch_one(&stack.pool)
        .await?;
    println!();
    println!(
        "### Top-x query ({} videos, {} per-minute rows; then rolled up per hour after 2 h)",
        ids.len(),
        rows.0
    );
    println!();
    println!("| counters | window | x | median ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    top_x_times(&stack.pool, "per minute", minutes).await?;
    let t = Instant::now();
    let (moved, _) = vtx_infra::db::roll_up_plays(
        &stack.pool,
        std::time::Duration::from_secs(7200),
        std::time::Duration::from_secs(minutes as u64 * 60 + 3600),
    )
    .await?;
    let rollup = t.elapsed().as_secs_f64();
    for analyze in ["ANALYZE play_counts", "ANALYZE play_counts_hourly"] {
        sqlx::query(analyze).execute(&stack.pool).await?;
    }
    let hourly: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts_hourly")
        .fetch_one(&stack.pool)
        .await?;
    top_x_times(&stack.pool, "rolled up", minutes).await?;
    println!();
    println!(
        "Roll-up: {moved} minute rows moved into {} hourly rows in {rollup:.1} s (once; the \
         tracker then moves one hour of minutes per hour).",
        hourly.0
    );
    stack.stop().await;
    Ok(())
}

/// Times the tracker's top-x query over the last hour and over `minutes`, for 100 and 2000.
async fn top_x_times(pool: &sqlx::PgPool, counters: &str, minutes: u32) -> anyhow::Result<()> {
    for (window_min, x) in [
        (60u64, 100u32),
        (60, 2000),
        (u64::from(minutes), 100),
        (u64::from(minutes), 2000),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let top =
                vtx_infra::db::top_videos(pool, std::time::Duration::from_secs(window_min * 60), x)
                    .await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(!top.is_empty(), "no top videos");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {counters} | {window_min} min | {x} | {:.1} | {:.1} |",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}

/// Bjøntegaard's delta rate with piecewise-linear interpolation: the mean difference of log
/// bitrate between two rate-quality curves over the quality range both cover, as the fraction
/// of the anchor's bitrate `test` saves at equal quality. Points are (bits/s, quality).
fn bd_saving(anchor: &[(f64, f64)], test: &[(f64, f64)]) -> Option<f64> {
    let curve = |pts: &[(f64, f64)]| {
        let mut c: Vec<(f64, f64)> = pts.iter().map(|&(r, q)| (q, r.ln())).collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
        c
    };
    let (a, t) = (curve(anchor), curve(test));
    let lo = a.first()?.0.max(t.first()?.0);
    let hi = a.last()?.0.min(t.last()?.0);
    if hi <= lo {
        return None;
    }
    let at = |c: &[(f64, f64)], q: f64| {
        let i = c.partition_point(|p| p.0 < q).clamp(1, c.len() - 1);
        let ((q0, r0), (q1, r1)) = (c[i - 1], c[i]);
        if (q1 - q0).abs() < 1e-12 {
            r0
        } else {
            r0 + (r1 - r0) * (q - q0) / (q1 - q0)
        }
    };
    let n = 200;
    let mean = (0..=n)
        .map(|k| {
            let q = lo + (hi - lo) * k as f64 / n as f64;
            at(&t, q) - at(&a, q)
        })
        .sum::<f64>()
        / f64::from(n + 1);
    Some(1.0 - mean.exp())
}

/// One encode of a rate-quality curve: (crf, bits/s, PSNR, SSIM).
type Point = (u32, f64, f64, f64);

/// `vtx bench extreme`: what the extreme tier saves against the high tier at equal quality.
/// Each clip's top rung is encoded at four quality settings per codec (H.264 at the high
/// tier's preset, HEVC and AV1 at the extreme tier's), measured against the source (PSNR and
/// SSIM), and the rate-quality curves compared (Bjøntegaard delta rate).
pub fn extreme(inputs: Vec<PathBuf>, priority_only: bool) -> anyhow::Result<()> {
    vtx_media::init();
    let inputs = if inputs.is_empty() {
        ["bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4"]
            .iter()
            .map(|c| shared_clip(c))
            .collect()
    } else {
        inputs
    };
    let scratch = tempfile::tempdir()?;
    if priority_only {
        return fast_beside_extreme(&inputs[0], scratch.path());
    }
    println!(
        "| clip | rung | codec | points: crf kbps PSNR SSIM | saving at equal PSNR | saving at equal SSIM |"
    );
    println!("| --- | --- | --- | --- | ---: | ---: |");
    for input in &inputs {
        let p = probe(input, &Limits::default(), Deadline::none())?;
        let rung = plan_ladder(p.video.display_width, p.video.display_height)
            .pop()
            .context("no rung")?;
        let name = input
            .file_name()
            .map_or("clip".into(), |n| n.to_string_lossy().into_owned());
        let mut curves: Vec<(VideoCodec, Vec<Point>)> = Vec::new();
        for (codec, tier, crfs) in [
            (VideoCodec::H264, Tier::High, [17u32, 21, 25, 29]),
            (VideoCodec::Hevc, Tier::Extreme, [20, 24, 28, 32]),
            (VideoCodec::Av1, Tier::Extreme, [24, 30, 36, 42]),
        ] {
            let mut points = Vec::new();
            for crf in crfs {
                let path = scratch
                    .path()
                    .join(format!("{name}-{}-{crf}.mp4", codec.label()));
                let mut req = TranscodeRequest::new(
                    input,
                    vec![RenditionOutput {
                        rung: rung.clone(),
                        codec,
                        path: path.clone(),
                    }],
                    tier,
                );
                req.audio = false;
                req.crf = Some(crf);
                req.rotation = p.video.rotation;
                let report = transcode_ladder(&req)?;
                let r = report.first().context("no report")?;
                let q = vtx_media::measure(input, p.video.rotation, &[path], Deadline::none())?;
                points.push((crf, r.bitrate as f64, q[0].psnr, q[0].ssim));
            }
            curves.push((codec, points));
        }
        let anchor = curves[0].1.clone();
        for (codec, points) in &curves {
            let psnr =
                |c: &[(u32, f64, f64, f64)]| c.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>();
            let ssim =
                |c: &[(u32, f64, f64, f64)]| c.iter().map(|p| (p.1, p.3)).collect::<Vec<_>>();
            let fmt = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0));
            let (sp, ss) = if *codec == VideoCodec::H264 {
                ("anchor".to_string(), "anchor".to_string())
            } else {
                (
                    fmt(bd_saving(&psnr(&anchor), &psnr(points))),
                    fmt(bd_saving(&ssim(&anchor), &ssim(points))),
                )
            };
            println!(
                "| {name} | {} | {} | {} | {sp} | {ss} |",
                rung.name,
                codec.label(),
                points
                    .iter()
                    .map(|(crf, kbps, psnr, ssim)| format!(
                        "{crf}: {:.0} {psnr:.2} {ssim:.4}",
                        kbps / 1000.0
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    fast_beside_extreme(&inputs[0], scratch.path())?;
    Ok(())
}

/// The fast tier's ladder of `input`, timed alone, beside extreme encodes at the normal
/// priority, and beside the same at the lowest (as workers run them): does background work
/// delay what publishes videos?
fn fast_beside_extreme(input: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let p = probe(input, &Limits::default(), Deadline::none())?;
    let ladder = plan_ladder(p.video.display_width, p.video.display_height);
    let top = ladder.last().context("no rung")?.clone();
    let fast_req = {
        let outputs = ladder
            .iter()
            .map(|r| RenditionOutput {
                rung: r.clone(),
                codec: VideoCodec::H264,
                path: dir.join(format!("beside-fast-{}.mp4", r.name)),
            })
            .collect();
        let mut r = TranscodeRequest::new(input, outputs, Tier::Fast);
        r.audio = false;
        r.rotation = p.video.rotation;
        r
    };
    let fast = |runs: usize| -> anyhow::Result<f64> {
        let mut t = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            transcode_ladder(&fast_req)?;
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    };
    let alone = fast(5)?;
    let mut rows = Vec::new();
    for low in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let mut req = TranscodeRequest::new(
            input,
            [VideoCodec::Hevc, VideoCodec::Av1]
                .into_iter()
                .map(|codec| RenditionOutput {
                    rung: top.clone(),
                    codec,
                    path: dir.join(format!("beside-extreme-{}.mp4", codec.label())),
                })
                .collect(),
            Tier::Extreme,
        );
        req.audio = false;
        req.rotation = p.video.rotation;
        let counter = frames.clone();
        req.progress = Some(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let bg_stop = stop.clone();
        // Back-to-back encodes, each cut off after a minute (longer than the timed runs, so
        // the encoders are set up once, as on a worker, and the load is steady meanwhile).
        let work = move || -> anyhow::Result<()> {
            while !bg_stop.load(Ordering::Relaxed) {
                req.deadline = Deadline::after(std::time::Duration::from_secs(60));
                match transcode_ladder(&req) {
                    Ok(_) | Err(vtx_media::MediaError::Timeout) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        };
        let bg = if low {
            vtx_media::spawn_low_priority("bench-extreme", work)?
        } else {
            std::thread::spawn(work)
        };
        std::thread::sleep(std::time::Duration::from_secs(5));
        let (f0, t0) = (frames.load(Ordering::Relaxed), Instant::now());
        let beside = fast(3)?;
        let extreme_fps = (frames.load(Ordering::Relaxed) - f0) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        bg.join()
            .map_err(|_| anyhow::anyhow!("the extreme encode panicked"))??;
        rows.push((low, beside, extreme_fps));
    }
    println!();
    println!(
        "### Fast tier beside extreme encodes ({}, {}-rung fast ladder, median of 5 alone, of 3 beside)",
        input
            .file_name()
            .map_or("clip".into(), |n| n.to_string_lossy()),
        ladder.len()
    );
    println!();
    println!("| fast ladder runs | wall s | vs alone | extreme frames/s meanwhile |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| alone | {alone:.2} | | |");
    for (low, beside, fps) in rows {
        println!(
            "| beside HEVC + AV1 encodes at {} | {beside:.2} | {:+.0}% | {fps:.1} |",
            if low {
                "the lowest priority (nice 19, SCHED_IDLE)"
            } else {
                "the normal priority"
            },
            (beside / alone - 1.0) * 100.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bd_saving;

    #[test]
    fn bd_saving_of_a_curve_at_half_the_rate_is_half() {
        let anchor = [(1000.0, 30.0), (2000.0, 33.0), (4000.0, 36.0)];
        let half: Vec<(f64, f64)> = anchor.iter().map(|&(r, q)| (r / 2.0, q)).collect();
        assert!((bd_saving(&anchor, &half).unwrap() - 0.5).abs() < 1e-9);
        assert!(bd_saving(&anchor, &[(1.0, 40.0), (2.0, 41.0)]).is_none());
    }
}
