//! Browsers, players and webhook receivers (`VTX_CORS_ORIGINS`, `VTX_PLAYBACK_*`,
//! `VTX_WEBHOOK_*`).

use std::time::Duration;

use anyhow::Context;

use super::Env;

/// Browsers and players (issue 16).
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// `VTX_CORS_ORIGINS`: origins (comma-separated, or `*`) whose pages may call the uploads
    /// API, tus and the status API from a browser. Playback objects allow any origin.
    pub cors_origins: Vec<String>,
    /// `VTX_PLAYBACK_FEED_SCALE`, `VTX_PLAYBACK_SHARPNESS`, `VTX_PLAYBACK_CELLULAR_MAX_BPS`: the
    /// rendition rule of `GET /v1/videos/{id}/playback`.
    pub playback: vtx_domain::playback::PlaybackPolicy,
    /// `VTX_WEBHOOK_RETRY_SECS`: waits before each retry of a failed delivery (comma-separated;
    /// default about a day: 5,300,1800,7200,18000,36000,36000).
    pub webhook_retry: Vec<Duration>,
    /// `VTX_WEBHOOK_TIMEOUT_SECS`: most one attempt may take (10).
    pub webhook_timeout: Duration,
    /// `VTX_WEBHOOK_CONCURRENCY`: attempts in flight at once per gateway (16).
    pub webhook_concurrency: usize,
    /// `VTX_WEBHOOK_DISPATCH`: this gateway sends webhooks (default true). Several gateways
    /// may all send; turn it off for gateways that should only serve requests.
    pub webhook_dispatch: bool,
    /// `VTX_WEBHOOK_RETENTION_DAYS`: how long events and their deliveries stay listed once
    /// every delivery has ended (30).
    pub webhook_retention: Duration,
    /// `VTX_WEB_VENDOR_DIR`: where the page's libraries are (`tus-js-client/dist/tus.min.js`,
    /// `hls.js/dist/hls.min.js`); default `.vtx/web/node_modules`, where the setup script puts them.
    pub vendor_dir: std::path::PathBuf,
    /// `VTX_SIGNED_PLAYBACK`: every video's playback URLs are signed and expire (default off:
    /// only those of videos uploaded with `"signed_playback": true`).
    pub signed_playback: bool,
    /// `VTX_PLAYBACK_URL_TTL_SECS`: how long a signed playback URL plays (6 h).
    pub playback_url_ttl: Duration,
}

impl WebConfig {
    pub(super) fn load(env: &Env<'_, impl Fn(&str) -> Option<String>>) -> anyhow::Result<Self> {
        let default = vtx_domain::playback::PlaybackPolicy::default();
        Ok(WebConfig {
            cors_origins: env
                .string("VTX_CORS_ORIGINS", "")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            playback: vtx_domain::playback::PlaybackPolicy {
                feed_scale: env.parse("VTX_PLAYBACK_FEED_SCALE", default.feed_scale)?,
                sharpness: env.parse("VTX_PLAYBACK_SHARPNESS", default.sharpness)?,
                cellular_max_bitrate: env.parse(
                    "VTX_PLAYBACK_CELLULAR_MAX_BPS",
                    default.cellular_max_bitrate,
                )?,
            },
            webhook_retry: {
                let text = env.string("VTX_WEBHOOK_RETRY_SECS", "");
                if text.is_empty() {
                    vtx_domain::webhooks::DEFAULT_RETRY_SCHEDULE
                        .iter()
                        .map(|s| Duration::from_secs(*s))
                        .collect()
                } else {
                    text.split(',')
                        .map(|s| {
                            let secs = s.trim().parse::<f64>().ok()?;
                            Duration::try_from_secs_f64(secs).ok()
                        })
                        .collect::<Option<Vec<_>>>()
                        .with_context(|| {
                            format!(
                                "VTX_WEBHOOK_RETRY_SECS={text:?} is not seconds, comma-separated"
                            )
                        })?
                }
            },
            webhook_timeout: Duration::from_secs(env.parse("VTX_WEBHOOK_TIMEOUT_SECS", 10)?),
            webhook_concurrency: env.parse::<usize>("VTX_WEBHOOK_CONCURRENCY", 16)?.max(1),
            webhook_dispatch: env.parse("VTX_WEBHOOK_DISPATCH", true)?,
            webhook_retention: Duration::from_secs_f64(
                env.parse::<f64>("VTX_WEBHOOK_RETENTION_DAYS", 30.0)?
                    .max(0.0)
                    * 86_400.0,
            ),
            signed_playback: env.parse("VTX_SIGNED_PLAYBACK", false)?,
            playback_url_ttl: Duration::from_secs(
                env.parse::<u64>("VTX_PLAYBACK_URL_TTL_SECS", 6 * 3600)?
                    .max(60),
            ),
            vendor_dir: env
                .string("VTX_WEB_VENDOR_DIR", ".vtx/web/node_modules")
                .into(),
        })
    }
}
