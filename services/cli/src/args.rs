//! The command line: every subcommand and its options.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vtx",
    version,
    about = "Distributed video transcoding for short-video upload"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Apply database migrations and create the bucket.
    Migrate,
    /// Run the upload gateway and status API.
    Gateway,
    /// Run the scheduler.
    Scheduler,
    /// Run a transcode worker.
    Worker,
    /// Run the hotness tracker: the most played videos (and predicted ones) get extreme
    /// encodes. Safe to run more than once: one acts, the others stand by.
    Hotness,
    /// Run every service in one process (local use).
    Up,
    /// Upload a video file as GOP-aligned chunks (resumable); prints the video id.
    Upload {
        file: PathBuf,
        /// Shortest chunk in seconds of video (chunks end at a keyframe).
        #[arg(long, default_value_t = 2.0)]
        chunk_seconds: f64,
        /// Chunks in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Send chunks at the video's real-time rate, as a phone still recording would.
        #[arg(long)]
        live: bool,
        /// Keep no resume state (by default a killed upload resumes when run again).
        #[arg(long)]
        no_resume: bool,
        /// Wait until the video is published or failed and print its status (exit codes: 0
        /// published, 2 failed, 3 still processing after --wait-timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 3600)]
        wait_timeout: u64,
        /// The uploader's follower count (a large one predicts a hot video: extreme encode).
        #[arg(long)]
        followers: Option<u64>,
        /// The video plays only from signed, expiring URLs (those the status API hands out).
        #[arg(long)]
        signed_playback: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Transcode a file on this machine (no database, broker or S3): split, parallel slice
    /// encodes, merge into MP4 + HLS, cover and manifest.json in OUT.
    Transcode {
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// fast (x264 veryfast), high (x264 slow) or extreme (x265 slow + SVT-AV1).
        #[arg(long, default_value = "fast")]
        tier: vtx_media::Tier,
        /// Target slice length in seconds; 0 encodes the video as one slice.
        #[arg(long, default_value_t = 10.0)]
        slice_seconds: f64,
        /// Slices encoded at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// PNG drawn in the top-right corner of every rendition.
        #[arg(long)]
        watermark: Option<PathBuf>,
        /// Skip PSNR/SSIM measurement.
        #[arg(long)]
        no_quality: bool,
    },
    /// Benchmarks (print Markdown tables; results are kept in docs/benchmarks.md).
    #[command(subcommand)]
    Bench(Bench),
    /// Show a video's (or a job's) state and, once ready, its playback URLs.
    Status {
        id: String,
        /// Wait until the video is published or failed (exit codes as for `upload --wait`).
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 600)]
        wait_timeout: u64,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

/// Where the gateway is, and what its TLS certificate may be signed by.
#[derive(clap::Args)]
pub(crate) struct GatewayArgs {
    /// The gateway's base URL (`http://` or `https://`).
    #[arg(long, env = "VTX_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// PEM certificates to trust besides the system's roots (a private CA, or the gateway's
    /// self-signed certificate). `SSL_CERT_FILE` also works.
    #[arg(long, env = "VTX_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// Media engine: shared decode vs separate runs, vs the ffmpeg command line, slices vs
    /// monolithic. Without --input, loops the shared 720p clip to 32 s.
    Media {
        #[arg(long)]
        input: Option<PathBuf>,
        /// Parallel single-threaded slice workers for (c).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Upload gateway under load: concurrent sessions on loopback against a `vtx gateway`
    /// process; throughput, p99 chunk latency, the gateway's peak RSS.
    Uploads {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Chunks each session sends (2 s GOP-aligned chunks of a shared clip).
        #[arg(long, default_value_t = 5)]
        chunks: usize,
    },
    /// The high tier against the fast tier (BD-rate, operating points) and per-title rate
    /// factors against fixed ones at equal quality.
    Quality {
        /// Clips to measure (default: the shared clips, camera clips included).
        inputs: Vec<PathBuf>,
        /// Longer clips are cut to their first this many seconds.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// The PSNR target of the per-title comparison.
        #[arg(long, default_value_t = 38.0)]
        target_psnr: f64,
    },
    /// Bitrate saving of the extreme tier (HEVC, AV1) against the high tier at equal quality.
    Extreme {
        /// Clips to measure (default: the shared clips).
        inputs: Vec<PathBuf>,
        /// Skip the rate-quality curves: only time the fast tier beside extreme encodes.
        #[arg(long)]
        priority_only: bool,
        /// Cut longer clips to their first this many seconds (0: whole clips).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
        /// Only the curves and per-title rows: skip timing the fast tier beside extreme encodes.
        #[arg(long)]
        curves_only: bool,
    },
    /// Play ingest on one gateway process, and the top-x query over synthetic history.
    /// The status API under fixed request rates: latency percentiles per rate.
    Status {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [500, 1000, 2000])]
        rates: Vec<u32>,
    },
    Hotness {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        senders: usize,
        #[arg(long, default_value_t = 20_000)]
        videos: u32,
        /// Minutes of per-minute history per video for the top-x query.
        #[arg(long, default_value_t = 1440)]
        minutes: u32,
    },
    /// `vtx upload --live` of a 60 s and a 5-minute clip: publish latency after the last chunk.
    Live {
        /// Uploads of the 60 s clip (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Uploads of the 5-minute clip.
        #[arg(long, default_value_t = 1)]
        long_runs: usize,
    },
    /// Distributed pipeline on the local services (own temporary database, queues and bucket
    /// prefix; real worker processes): publish latency by clip length, 1 vs 2 workers.
    Pipeline,
    /// Publish latency under a steady stream of live uploads at shares of the box's fast+high
    /// capacity (measured first), per clip length; then full-speed uploads with and without
    /// instant publish.
    PublishLoad {
        /// Seconds over which each stream's uploads start.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Shares of the fast+high capacity, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [0.3, 0.6, 0.9])]
        loads: Vec<f64>,
        /// Clip lengths in seconds, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [15, 60, 300])]
        lengths: Vec<u32>,
    },
}
