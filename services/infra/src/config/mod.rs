//! Configuration from `VTX_*` environment variables, with defaults that match the local setup
//! (`deploy/local/setup.sh`). Values are validated when loaded; secrets never reach `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

mod auth;
mod web;
pub use auth::AuthConfig;
pub use web::WebConfig;

/// A value that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `VTX_DATABASE_URL`; may hold a password, hence secret.
    pub database_url: Secret,
    pub database_max_connections: u32,
    /// `VTX_AMQP_URL`.
    pub amqp_url: Secret,
    /// `VTX_QUEUE_PREFIX`: every queue name starts with it (tests use a random one).
    pub queue_prefix: String,
    pub s3: S3Config,
    /// `VTX_TLS_CA_FILE`: certificates that S3 over `https://` and RabbitMQ over `amqps://` are
    /// trusted with, besides the system's roots.
    pub tls_roots: ExtraRoots,
    /// `VTX_INSPECT_PROGRAM`: the `vtx` binary the gateway runs as `vtx inspect-chunk` to
    /// check each chunk in a child process (default: the running executable).
    pub inspect_program: Option<std::path::PathBuf>,
    /// `VTX_HTTP_ADDR`: where the gateway listens; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// `VTX_MAX_CONNECTIONS`: connections the gateway serves at once; past it, it stops
    /// accepting until one ends (the kernel's backlog holds the rest).
    pub max_connections: usize,
    /// `VTX_SHUTDOWN_SECS`: how long a stopping gateway waits for requests in flight.
    pub shutdown_grace: Duration,
    /// `VTX_METRICS_ADDR`: where `vtx worker` and `vtx scheduler` serve `/metrics` (the gateway
    /// serves it on its own address).
    pub metrics_addr: SocketAddr,
    /// `VTX_PUBLIC_URL`: base of the playback URLs handed to clients. Defaults to the gateway.
    pub public_url: Option<String>,
    pub uploads: UploadLimits,
    pub auth: AuthConfig,
    pub worker: WorkerConfig,
    pub pipeline: PipelineConfig,
    pub hotness: HotnessConfig,
    pub web: WebConfig,
}

/// Plays, the hotness tracker and extreme encodes (issue 6).
#[derive(Clone, Debug)]
pub struct HotnessConfig {
    /// `VTX_PLAYS_FLUSH_SECS`: how often the gateway adds its in-memory play counts to
    /// PostgreSQL (what a crash of the gateway can lose).
    pub flush_every: Duration,
    /// `VTX_MAX_PLAYS_PER_BATCH`.
    pub max_batch: usize,
    /// `VTX_HOT_PERIOD_SECS`: how often the tracker picks the top videos.
    pub period: Duration,
    /// `VTX_HOT_ROLLUP_AFTER_SECS`: per-minute play counters of hours that ended longer ago than
    /// this are rolled up per hour by the tracker (default 2 h).
    pub rollup_after: Duration,
    /// `VTX_HOT_WINDOW_MIN_SECS`/`_MAX_SECS`, `VTX_HOT_TOP_MIN`/`_MAX`, `VTX_HOT_IDLE_LOAD`,
    /// `VTX_HOT_BUSY_LOAD`: the bounds the window and top-x move between with the load.
    pub bounds: vtx_domain::hotness::HotBounds,
    /// `VTX_EXTREME_FOLLOWERS`: an upload whose uploader has at least this many followers is
    /// predicted hot.
    pub followers_threshold: u64,
    /// `VTX_EXTREME_PSNR_TOLERANCE_DB`, `VTX_EXTREME_SSIM_TOLERANCE`, `VTX_EXTREME_MIN_SAVING`.
    pub accept: vtx_domain::hotness::AcceptRule,
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// `VTX_TIERS`: tiers every job runs, in order; the first publishes, each later one replaces
    /// the one before it.
    pub tiers: Vec<vtx_domain::Tier>,
    /// `VTX_SLICE_SECONDS`: fixed slice length; 0 chooses from the video's length and the
    /// workers consuming fast slices (between the two bounds below).
    pub slice_seconds: f64,
    pub min_slice_seconds: f64,
    pub max_slice_seconds: f64,
    /// `VTX_SWAP_GRACE_SECS`: how long a replaced tier's objects stay fetchable.
    pub swap_grace: Duration,
    /// `VTX_LIVE_INGEST`: encode each media chunk of a chunked upload into the fast tier
    /// as soon as it is stored, so completing only publishes (default on).
    pub live_ingest: bool,
    /// `VTX_INSTANT_PUBLISH` (default off): a live-ingest upload whose every chunk is a
    /// standard input (`VTX_INSTANT_MAX_BITRATE`, `VTX_INSTANT_MAX_GOP_SECS`; see
    /// `InstantPolicy`) is published at completion as the upload itself, remuxed into one HLS
    /// rendition without re-encoding; the fast ladder then replaces it.
    pub instant: Option<vtx_domain::live_ingest::InstantPolicy>,
    /// `VTX_MAX_BITRATE_FACTOR` (1.0): no rendition peaks above this many times the source's
    /// video bitrate (a rung's own peak caps it when the source is above that);
    /// `VTX_RUNG_MIN_RATIO` (0.85): a rung whose capped peak is at least this share of the next
    /// rung's is dropped (0 keeps every rung).
    pub max_bitrate_factor: f64,
    pub rung_min_ratio: f64,
}

/// PEM certificates (a private CA, a self-signed endpoint) that outbound TLS trusts besides
/// the system's roots.
#[derive(Clone, Debug, Default)]
pub struct ExtraRoots(Option<std::sync::Arc<str>>);

impl ExtraRoots {
    /// The certificates in the PEM file at `path`, if one is given.
    pub fn load(path: Option<String>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        anyhow::ensure!(
            pem.contains("-----BEGIN CERTIFICATE-----"),
            "{path} holds no PEM certificate"
        );
        Ok(Self::from_pem(pem))
    }

    pub fn from_pem(pem: impl Into<std::sync::Arc<str>>) -> Self {
        Self(Some(pem.into()))
    }

    pub fn pem(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Secret,
    /// Every object key starts with it (tests use a random one).
    pub key_prefix: String,
}
#[derive(Clone, Debug)]
pub struct UploadLimits {
    pub max_chunk_bytes: u64,
    pub max_upload_bytes: u64,
    pub max_chunks: u32,
    pub session_ttl: Duration,
    /// `VTX_BODY_IDLE_SECS`: a request body that sends nothing this long is refused (408).
    pub body_idle: Duration,
    /// `VTX_BODY_TOTAL_SECS`: the longest a request body may take, however steadily it comes.
    pub body_total: Duration,
    /// `VTX_TUS_MIN_PART_BYTES`: the smallest tus PATCH body but the last; raised for a long
    /// upload so that it needs at most `VTX_TUS_MAX_PARTS` parts.
    pub tus_min_part_bytes: u64,
    pub tus_max_parts: u64,
    /// `VTX_ENCODE_AHEAD_SECS`: seconds of video a chunked session encodes before it completes
    /// (an abandoned upload costs at most this much encoding); later chunks at completion.
    pub encode_ahead_seconds: f64,
    /// What one grant (one app user) may do: `VTX_GRANT_MAX_OPEN_UPLOADS` sessions open at
    /// once, `VTX_GRANT_UPLOADS_PER_MINUTE` opened per minute, `VTX_GRANT_MAX_INFLIGHT_BYTES`
    /// of request bodies arriving at once (per gateway process). Past them: 429 + Retry-After.
    pub grant_max_open_uploads: u64,
    pub grant_uploads_per_minute: u64,
    pub grant_max_inflight_bytes: u64,
    /// `VTX_INSPECT_MEMORY_BYTES`: the address space a chunk check's child process may use
    /// beyond what the program holds once started (`RLIMIT_AS`). Past it: 422 `too-large`.
    pub inspect_memory_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Tasks one worker process runs at once.
    pub concurrency: u16,
    pub transcode_timeout: Duration,
    /// Deliveries of one task before its job fails with `retries-exhausted`.
    pub max_attempts: u32,
    pub max_source_seconds: u64,
    /// `VTX_LEASE_SECS`: a slice's lease; heartbeats renew it every third of it.
    pub lease: Duration,
    /// `VTX_WORKER_QUEUES`: task classes this worker takes (`fast`, `high`, `extreme`,
    /// `merge`; default all). A class whose encoders this machine cannot open is dropped.
    pub queues: Vec<String>,
    /// `VTX_H264_ENCODER`: preferred H.264 encoder (h264_nvenc, h264_qsv, h264_vaapi); when it
    /// cannot be opened, workers fall back to libx264. Empty: the best one detected.
    pub h264_encoder: Option<String>,
    /// `VTX_DAMAGE_MAX_SHARE` (0.01) and `VTX_DAMAGE_MAX_RUN_SECS` (1): undecodable frames of a
    /// source are concealed up to this share of its frames and this long a run; beyond, the
    /// source fails as `corrupt-stream`.
    pub damage: vtx_domain::damage::DamagePolicy,
    /// `VTX_QUALITY_TARGET`: what the high and extreme tiers' per-title search aims at: `fast`
    /// (the fast tier's quality with fewer bits; the default), `psnr:DB`, `ssim:VALUE`, or `off`
    /// (each tier's fixed rate factor: quality first).
    pub quality_target: Option<vtx_domain::QualityTarget>,
    /// `VTX_PSYCHOVISUAL` (false): x264's and x265's psychovisual rate-distortion in the high
    /// and extreme tiers. Off, they aim at the look the fast tier has (x264 veryfast refines
    /// too little for psy-rd to act) and spend fewer bits at equal PSNR/SSIM; on, detail looks
    /// sharper at a cost in bits (docs/benchmarks.md).
    pub psychovisual: bool,
    /// `VTX_VMAF_TOOL` (`.vtx/vmaf/bin/vmaf`, which deploy/local/setup.sh builds): Netflix's
    /// `vmaf` tool, for `VTX_QUALITY_TARGET=vmaf:SCORE` and experiment arms with such a target.
    /// `None` when the default is not there.
    pub vmaf_tool: Option<std::path::PathBuf>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get`, so tests can supply their own values.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env(&get);
        let cfg = Config {
            database_url: Secret::new(
                env.string("VTX_DATABASE_URL", "postgres://vtx:vtx@127.0.0.1:5432/vtx"),
            ),
            database_max_connections: env.parse("VTX_DATABASE_MAX_CONNECTIONS", 10)?,
            amqp_url: Secret::new(
                env.string("VTX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ),
            queue_prefix: env.string("VTX_QUEUE_PREFIX", "vtx"),
            s3: S3Config {
                endpoint: env.string("VTX_S3_ENDPOINT", "http://127.0.0.1:9000"),
                region: env.string("VTX_S3_REGION", "us-east-1"),
                bucket: env.string("VTX_S3_BUCKET", "vtx"),
                access_key: env.string("VTX_S3_ACCESS_KEY", "vtx"),
                secret_key: Secret::new(env.string("VTX_S3_SECRET_KEY", "vtx-local-secret")),
                key_prefix: env.string("VTX_S3_PREFIX", ""),
            },
            tls_roots: ExtraRoots::load(get("VTX_TLS_CA_FILE").filter(|s| !s.is_empty()))?,
            inspect_program: get("VTX_INSPECT_PROGRAM")
                .filter(|s| !s.is_empty())
                .map(Into::into),
            http_addr: env.parse("VTX_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            max_connections: env.parse::<usize>("VTX_MAX_CONNECTIONS", 4096)?.max(1),
            shutdown_grace: Duration::from_secs(env.parse("VTX_SHUTDOWN_SECS", 30)?),
            metrics_addr: env
                .parse("VTX_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9464)))?,
            public_url: get("VTX_PUBLIC_URL").filter(|s| !s.is_empty()),
            uploads: UploadLimits {
                max_chunk_bytes: env.parse("VTX_MAX_CHUNK_BYTES", 64 << 20)?,
                max_upload_bytes: env.parse("VTX_MAX_UPLOAD_BYTES", 4 << 30)?,
                max_chunks: env.parse("VTX_MAX_CHUNKS", 2_000)?,
                session_ttl: Duration::from_secs(env.parse("VTX_UPLOAD_TTL_SECS", 24 * 3600)?),
                body_idle: Duration::from_secs(env.parse("VTX_BODY_IDLE_SECS", 60)?),
                body_total: Duration::from_secs(env.parse("VTX_BODY_TOTAL_SECS", 30 * 60)?),
                tus_min_part_bytes: env.parse("VTX_TUS_MIN_PART_BYTES", 256 * 1024)?,
                tus_max_parts: env.parse::<u64>("VTX_TUS_MAX_PARTS", 10_000)?.max(1),
                encode_ahead_seconds: env.parse("VTX_ENCODE_AHEAD_SECS", 900.0)?,
                grant_max_open_uploads: env.parse("VTX_GRANT_MAX_OPEN_UPLOADS", 20)?,
                grant_uploads_per_minute: env.parse("VTX_GRANT_UPLOADS_PER_MINUTE", 60)?,
                grant_max_inflight_bytes: env.parse("VTX_GRANT_MAX_INFLIGHT_BYTES", 512 << 20)?,
                inspect_memory_bytes: env.parse("VTX_INSPECT_MEMORY_BYTES", 512 << 20)?,
            },
            auth: AuthConfig::load(&env)?,
            web: WebConfig::load(&env)?,
            worker: WorkerConfig {
                concurrency: env.parse("VTX_WORKER_CONCURRENCY", 1)?,
                queues: env
                    .string("VTX_WORKER_QUEUES", "fast,high,extreme,merge")
                    .split(',')
                    .map(|q| q.trim().to_string())
                    .filter(|q| !q.is_empty())
                    .collect(),
                transcode_timeout: Duration::from_secs(
                    env.parse("VTX_TRANSCODE_TIMEOUT_SECS", 30 * 60)?,
                ),
                max_attempts: env.parse("VTX_MAX_ATTEMPTS", 3)?,
                max_source_seconds: env.parse("VTX_MAX_SOURCE_SECONDS", 3600)?,
                lease: Duration::from_secs(env.parse("VTX_LEASE_SECS", 30)?),
                h264_encoder: get("VTX_H264_ENCODER").filter(|s| !s.is_empty()),
                damage: vtx_domain::damage::DamagePolicy {
                    max_share: env.parse("VTX_DAMAGE_MAX_SHARE", 0.01)?,
                    max_run_seconds: env.parse("VTX_DAMAGE_MAX_RUN_SECS", 1.0)?,
                },
                quality_target: match env.string("VTX_QUALITY_TARGET", "fast").as_str() {
                    "off" => None,
                    t => Some(
                        t.parse()
                            .map_err(|e| anyhow::anyhow!("VTX_QUALITY_TARGET={e}"))?,
                    ),
                },
                psychovisual: env.parse("VTX_PSYCHOVISUAL", false)?,
                vmaf_tool: match get("VTX_VMAF_TOOL").filter(|s| !s.is_empty()) {
                    Some(path) => Some(path.into()),
                    None => {
                        Some(std::path::PathBuf::from(".vtx/vmaf/bin/vmaf")).filter(|p| p.is_file())
                    }
                },
            },
            pipeline: PipelineConfig {
                tiers: env
                    .string("VTX_TIERS", "fast,high")
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<vtx_domain::Tier>()
                            .map_err(anyhow::Error::msg)
                    })
                    .collect::<anyhow::Result<_>>()
                    .context("VTX_TIERS")?,
                slice_seconds: env.parse("VTX_SLICE_SECONDS", 0.0)?,
                min_slice_seconds: env.parse("VTX_MIN_SLICE_SECONDS", 4.0)?,
                max_slice_seconds: env.parse("VTX_MAX_SLICE_SECONDS", 30.0)?,
                swap_grace: Duration::from_secs(env.parse("VTX_SWAP_GRACE_SECS", 600)?),
                // The setting's earlier name still works.
                live_ingest: env
                    .parse("VTX_LIVE_INGEST", env.parse("VTX_PIPELINE_UPLOADS", true)?)?,
                max_bitrate_factor: env.parse(
                    "VTX_MAX_BITRATE_FACTOR",
                    vtx_domain::ladder::DEFAULT_BITRATE_FACTOR,
                )?,
                rung_min_ratio: env.parse(
                    "VTX_RUNG_MIN_RATIO",
                    vtx_domain::ladder::DEFAULT_RUNG_MIN_RATIO,
                )?,
                instant: if env.parse("VTX_INSTANT_PUBLISH", false)? {
                    let d = vtx_domain::live_ingest::InstantPolicy::default();
                    Some(vtx_domain::live_ingest::InstantPolicy {
                        max_bitrate: env.parse("VTX_INSTANT_MAX_BITRATE", d.max_bitrate)?,
                        max_gop_seconds: env
                            .parse("VTX_INSTANT_MAX_GOP_SECS", d.max_gop_seconds)?,
                        ..d
                    })
                } else {
                    None
                },
            },
            hotness: HotnessConfig {
                flush_every: Duration::from_millis(
                    (env.parse("VTX_PLAYS_FLUSH_SECS", 5.0f64)? * 1000.0) as u64,
                ),
                max_batch: env.parse("VTX_MAX_PLAYS_PER_BATCH", 10_000)?,
                period: Duration::from_millis(
                    (env.parse("VTX_HOT_PERIOD_SECS", 60.0f64)? * 1000.0) as u64,
                ),
                rollup_after: Duration::from_secs(env.parse("VTX_HOT_ROLLUP_AFTER_SECS", 7200)?),
                bounds: vtx_domain::hotness::HotBounds {
                    window_min_secs: env.parse("VTX_HOT_WINDOW_MIN_SECS", 3600)?,
                    window_max_secs: env.parse("VTX_HOT_WINDOW_MAX_SECS", 24 * 3600)?,
                    top_min: env.parse("VTX_HOT_TOP_MIN", 100)?,
                    top_max: env.parse("VTX_HOT_TOP_MAX", 2000)?,
                    idle_load: env.parse("VTX_HOT_IDLE_LOAD", 1.0)?,
                    busy_load: env.parse("VTX_HOT_BUSY_LOAD", 10.0)?,
                },
                followers_threshold: env.parse("VTX_EXTREME_FOLLOWERS", 100_000)?,
                accept: vtx_domain::hotness::AcceptRule {
                    psnr_tolerance_db: env.parse("VTX_EXTREME_PSNR_TOLERANCE_DB", 0.5)?,
                    ssim_tolerance: env.parse("VTX_EXTREME_SSIM_TOLERANCE", 0.005)?,
                    min_saving: env.parse("VTX_EXTREME_MIN_SAVING", 0.1)?,
                },
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self
            .queue_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("VTX_QUEUE_PREFIX may hold only letters, digits, '-', '_' and '.'");
        }
        if self.s3.bucket.is_empty() {
            bail!("VTX_S3_BUCKET must not be empty");
        }
        let factor = self.pipeline.max_bitrate_factor;
        if !(factor.is_finite() && factor > 0.0) {
            bail!("VTX_MAX_BITRATE_FACTOR must be a number above 0 (1.0: never above the source)");
        }
        if !(0.0..1.0).contains(&self.pipeline.rung_min_ratio) {
            bail!("VTX_RUNG_MIN_RATIO must be at least 0 and below 1 (0 keeps every rung)");
        }
        if self.pipeline.tiers.contains(&vtx_domain::Tier::Instant) {
            bail!("VTX_TIERS: the instant tier is not encoded; turn on VTX_INSTANT_PUBLISH");
        }
        if self.uploads.max_chunk_bytes == 0 || self.uploads.max_chunks == 0 {
            bail!("upload limits must be positive");
        }
        if self.pipeline.tiers.is_empty() {
            bail!("VTX_TIERS must name at least one tier");
        }
        if self.worker.lease < Duration::from_secs(3) {
            bail!("VTX_LEASE_SECS must be at least 3");
        }
        if let Some(q) = self
            .worker
            .queues
            .iter()
            .find(|q| !["fast", "high", "extreme", "merge"].contains(&q.as_str()))
        {
            bail!("VTX_WORKER_QUEUES: unknown class {q:?} (fast, high, extreme, merge)");
        }
        let b = &self.hotness.bounds;
        if b.window_min_secs == 0
            || b.window_min_secs > b.window_max_secs
            || b.top_min > b.top_max
            || b.idle_load >= b.busy_load
        {
            bail!(
                "hotness bounds: need 0 < VTX_HOT_WINDOW_MIN_SECS <= VTX_HOT_WINDOW_MAX_SECS, \
                 VTX_HOT_TOP_MIN <= VTX_HOT_TOP_MAX and VTX_HOT_IDLE_LOAD < VTX_HOT_BUSY_LOAD"
            );
        }
        if self.hotness.max_batch == 0 || self.hotness.flush_every.is_zero() {
            bail!("VTX_MAX_PLAYS_PER_BATCH and VTX_PLAYS_FLUSH_SECS must be positive");
        }
        if self.worker.concurrency == 0 || self.worker.max_attempts == 0 {
            bail!("VTX_WORKER_CONCURRENCY and VTX_MAX_ATTEMPTS must be positive");
        }
        match (&self.worker.vmaf_tool, self.worker.quality_target) {
            (Some(tool), _) if !tool.is_file() => {
                bail!("VTX_VMAF_TOOL={}: no such file", tool.display())
            }
            (None, Some(vtx_domain::QualityTarget::Vmaf(_))) => bail!(
                "VTX_QUALITY_TARGET=vmaf:… needs Netflix's vmaf tool: set VTX_VMAF_TOOL \
                 (deploy/local/setup.sh builds .vtx/vmaf/bin/vmaf)"
            ),
            _ => {}
        }
        Ok(())
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn string(&self, key: &str, default: &str) -> String {
        (self.0)(key)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn parse<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match (self.0)(key).filter(|s| !s.is_empty()) {
            Some(v) => v
                .parse()
                .with_context(|| format!("{key}={v:?} is not valid")),
            None => Ok(default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_keys_are_named_long_enough_and_distinct() {
        let with = |k: &'static str, v: String| move |key: &str| (key == k).then(|| v.clone());
        let long = "x".repeat(32);
        let cfg = Config::from_lookup(with(
            "VTX_UPLOAD_TOKEN_KEYS",
            format!("new:{long}, old:{long}"),
        ))
        .unwrap();
        let ids: Vec<&str> = cfg
            .auth
            .signing_keys
            .iter()
            .map(|(i, _)| i.as_str())
            .collect();
        assert_eq!(ids, ["new", "old"]);
        for bad in [
            "short:tooshort".to_string(),
            format!("a:{long},a:{long}"),
            long.clone(),
            format!("bad id:{long}"),
        ] {
            assert!(
                Config::from_lookup(with("VTX_UPLOAD_TOKEN_KEYS", bad.clone())).is_err(),
                "{bad}"
            );
        }
        let legacy = Config::from_lookup(with("VTX_UPLOAD_TOKEN_SECRET", long.clone())).unwrap();
        assert_eq!(legacy.auth.signing_keys[0].0, "s");
        assert!(Config::from_lookup(with("VTX_UPLOAD_TOKEN_SECRET", "short".into())).is_err());
    }

    #[test]
    fn defaults_match_the_local_setup() {
        let cfg = Config::from_lookup(|_| None).unwrap();
        assert_eq!(cfg.http_addr.port(), 8080);
        assert_eq!(cfg.s3.bucket, "vtx");
        assert_eq!(cfg.queue_prefix, "vtx");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cfg = Config::from_lookup(|k| {
            (k == "VTX_DATABASE_URL").then(|| "postgres://u:hunter2@h/db".to_string())
        })
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"));
        assert!(!dbg.contains("vtx-local-secret"));
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_name() {
        let err =
            Config::from_lookup(|k| (k == "VTX_MAX_ATTEMPTS").then(|| "lots".into())).unwrap_err();
        assert!(err.to_string().contains("VTX_MAX_ATTEMPTS"));
        assert!(Config::from_lookup(|k| (k == "VTX_QUEUE_PREFIX").then(|| "a b".into())).is_err());
        let err = Config::from_lookup(|k| (k == "VTX_WORKER_QUEUES").then(|| "fast,gpu".into()))
            .unwrap_err();
        assert!(err.to_string().contains("VTX_WORKER_QUEUES"), "{err}");
    }
}
