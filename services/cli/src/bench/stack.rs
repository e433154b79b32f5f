//! A throwaway vtx on the local services for the benches that need one.

use super::*;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// A throwaway vtx on the local services: its own database (dropped at the end), queue prefix
/// and bucket prefix; gateway, scheduler and outbox relay in this process, workers as processes.
pub(super) struct BenchStack {
    pub(super) client: vtx_client::Client,
    pub(super) pool: sqlx::PgPool,
    pub(super) store: vtx_infra::ObjectStore,
    pub(super) env: Vec<(String, String)>,
    pub(super) admin: sqlx::PgPool,
    pub(super) database: String,
    pub(super) broker: vtx_infra::broker::BrokerClient,
    pub(super) services: vtx_stack::Stack,
}

impl BenchStack {
    pub(super) async fn start(tiers: &str) -> anyhow::Result<Self> {
        Self::start_with(tiers, &[]).await
    }

    /// As `start`, with extra `VTX_*` settings (the worker processes get them too).
    pub(super) async fn start_with(tiers: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        use vtx_infra::Config;
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
        let mut env: Vec<(String, String)> = vec![
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
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cfg = Config::from_lookup(|k| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        })?;
        let resources = vtx_stack::Resources::connect(&cfg).await?;
        resources.prepare().await?;
        let vtx_stack::Resources {
            pool,
            store,
            broker,
        } = resources.clone();
        let roles = vtx_stack::Roles {
            gateway: true,
            scheduler: true,
            ..vtx_stack::Roles::default()
        };
        let services = vtx_stack::Stack::start(&cfg, resources, roles).await?;
        let client = vtx_client::Client::new(services.gateway_url().expect("a gateway"))
            .with_token(cfg.auth.service_tokens[0].expose())
            .with_cutter(vtx_chunker::cutter());
        Ok(Self {
            client,
            pool,
            store,
            env,
            admin,
            database,
            broker,
            services,
        })
    }

    /// Starts `n` worker processes and waits until they consume fast slices.
    pub(super) async fn workers(&self, n: usize) -> anyhow::Result<Vec<ChildGuard>> {
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
    pub(super) async fn publish_latency(
        &self,
        clip: &Path,
    ) -> anyhow::Result<(f64, vtx_domain::JobId)> {
        let done = self
            .client
            .upload_file(clip, &Default::default(), &|_, _| {})
            .await?;
        let t0 = Instant::now();
        self.wait_published(done.video_id).await?;
        Ok((t0.elapsed().as_secs_f64(), done.job_id))
    }

    /// Polls every 50 ms (finer than the client's wait) until the video is published.
    pub(super) async fn wait_published(&self, video: vtx_domain::VideoId) -> anyhow::Result<()> {
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
    pub(super) async fn gateway_process(&self) -> anyhow::Result<(ChildGuard, vtx_client::Client)> {
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
            vtx_client::Client::new(url)
                .with_token(self.service_token()?)
                .with_cutter(vtx_chunker::cutter()),
        ))
    }

    /// The service token the stack's processes accept.
    pub(super) fn service_token(&self) -> anyhow::Result<String> {
        self.env
            .iter()
            .find(|(k, _)| k == "VTX_SERVICE_TOKEN")
            .map(|(_, v)| v.clone())
            .context("service token")
    }

    pub(super) async fn stop(self) {
        self.services.stop().await;
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
