//! The upload gateway and status API.
//!
//! `Gateway::build` binds (port 0 in tests) and exposes the real address; `run_until` serves
//! until the token is cancelled, then drains in-flight requests.

mod auth;
mod body;
mod cors;
mod error;
mod etag;
mod events;
mod experiments;
mod grants;
mod health;
pub mod inspect;
mod media;
mod openapi;
mod playback;
mod plays;
mod staged;
mod status;
mod tus;
mod uploads;
mod web;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vtx_infra::broker::BrokerClient;
use vtx_infra::config::UploadLimits;
use vtx_infra::{Config, ObjectStore};

pub use auth::{Auth, Caller, Claims, TokenKind};
pub use error::{ApiError, ApiResult};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub store: ObjectStore,
    pub broker: BrokerClient,
    pub limits: Arc<UploadLimits>,
    pub auth: Auth,
    /// Checks chunks in child processes, under the media limits and a memory limit.
    pub inspector: Arc<inspect::Inspector>,
    /// Chunk checks running at once (each holds FFmpeg contexts and a core): two per core.
    pub chunk_checks: Arc<tokio::sync::Semaphore>,
    /// Default lifetime of a grant token.
    pub grant_ttl: std::time::Duration,
    /// Base of playback URLs, without a trailing slash.
    pub public_url: Arc<str>,
    /// Chunked uploads are transcoded while they arrive (`VTX_LIVE_INGEST`).
    pub live_ingest: bool,
    /// Standard inputs of live-ingest uploads are published at completion as they are
    /// (`VTX_INSTANT_PUBLISH`), under this policy.
    pub instant: Option<vtx_domain::live_ingest::InstantPolicy>,
    /// How long a replaced tier's objects stay fetchable (`VTX_SWAP_GRACE_SECS`).
    pub swap_grace: std::time::Duration,
    /// Play counts waiting for their flush.
    pub plays: Arc<plays::PlayCounter>,
    /// Request bodies in flight per grant.
    pub inflight: grants::InFlight,
    /// The rendition rule of `GET /v1/videos/{id}/playback`.
    pub playback: vtx_domain::playback::PlaybackPolicy,
    /// Origins allowed to call the API from a browser.
    pub cors_origins: Arc<[String]>,
    /// Where the web page's libraries are.
    pub web_vendor_dir: Arc<std::path::Path>,
    /// Every video's playback URLs are signed.
    pub signed_playback: bool,
    /// The deployment has Netflix's `vmaf` tool (`VTX_VMAF_TOOL`): experiment arms may aim at
    /// a VMAF score.
    pub vmaf: bool,
    /// Which videos play from signed URLs only (a video's flag never changes).
    pub signed_videos: Arc<std::sync::Mutex<std::collections::HashMap<vtx_domain::VideoId, bool>>>,
    pub playback_url_ttl: std::time::Duration,
}

pub struct Gateway {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
    public_url: String,
    plays: Arc<plays::PlayCounter>,
    pool: PgPool,
    flush_every: std::time::Duration,
    connections: Arc<tokio::sync::Semaphore>,
    shutdown_grace: std::time::Duration,
    /// For the webhook dispatcher, which renders events as the status API does.
    state: AppState,
    /// `None`: this gateway sends no webhooks (`VTX_WEBHOOK_DISPATCH=false`); others do.
    webhooks: Option<webhooks::dispatch::DispatchSettings>,
}

impl Gateway {
    pub async fn build(
        cfg: &Config,
        pool: PgPool,
        store: ObjectStore,
        broker: BrokerClient,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !cfg.auth.service_tokens.is_empty(),
            "no service token: set VTX_SERVICE_TOKEN (at least 16 characters), or run \
             deploy/local/setup.sh, which writes one to .vtx/service-token"
        );
        let tokens: Vec<String> = cfg
            .auth
            .service_tokens
            .iter()
            .map(|t| t.expose().to_string())
            .collect();
        let keys: Vec<(String, String)> = cfg
            .auth
            .signing_keys
            .iter()
            .map(|(id, k)| (id.clone(), k.expose().to_string()))
            .collect();
        let auth = Auth::new(&tokens, &keys);
        let inspector = inspect::Inspector::start(
            cfg.inspect_program.clone(),
            cfg.uploads.inspect_memory_bytes,
            vtx_media::Limits {
                max_duration: std::time::Duration::from_secs(cfg.worker.max_source_seconds),
                max_file_bytes: cfg.uploads.max_chunk_bytes,
                ..vtx_media::Limits::default()
            },
        )
        .await?;
        let listener = TcpListener::bind(cfg.http_addr).await?;
        let addr = listener.local_addr()?;
        let public_url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_string();
        let plays = Arc::new(plays::PlayCounter::new(
            &cfg.hotness.bounds,
            cfg.hotness.max_batch,
        ));
        let state = AppState {
            pool: pool.clone(),
            store,
            broker,
            limits: Arc::new(cfg.uploads.clone()),
            auth,
            inspector: Arc::new(inspector),
            chunk_checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
            grant_ttl: cfg.auth.grant_ttl,
            public_url: public_url.as_str().into(),
            live_ingest: cfg.pipeline.live_ingest,
            instant: cfg.pipeline.instant.filter(|_| cfg.pipeline.live_ingest),
            swap_grace: cfg.pipeline.swap_grace,
            plays: plays.clone(),
            inflight: grants::InFlight::default(),
            playback: cfg.web.playback,
            cors_origins: cfg.web.cors_origins.clone().into(),
            web_vendor_dir: cfg.web.vendor_dir.clone().into(),
            signed_playback: cfg.web.signed_playback,
            vmaf: cfg.worker.vmaf_tool.is_some(),
            signed_videos: Arc::default(),
            playback_url_ttl: cfg.web.playback_url_ttl,
        };
        Ok(Self {
            listener,
            router: router(state.clone()),
            state,
            webhooks: cfg
                .web
                .webhook_dispatch
                .then(|| webhooks::dispatch::DispatchSettings {
                    retry: cfg.web.webhook_retry.clone(),
                    timeout: cfg.web.webhook_timeout,
                    concurrency: cfg.web.webhook_concurrency,
                    retention: cfg.web.webhook_retention,
                }),
            addr,
            public_url,
            plays,
            pool,
            flush_every: cfg.hotness.flush_every,
            connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            shutdown_grace: cfg.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Serves HTTP/1.1 through hyper with each connection's read buffer capped at
    /// [`READ_BUFFER`] (hyper lets it grow to about 400 KiB while a handler drains an upload
    /// more slowly than the client sends it, which a thousand concurrent uploads multiply).
    /// On cancellation, stops accepting and waits for the connections in flight.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        tracing::info!(addr = %self.addr, "gateway listening");
        // Play counts go to PostgreSQL every interval, and once more after the last request.
        let flush_stop = CancellationToken::new();
        let flusher = {
            let (plays, pool, every, stop) = (
                self.plays.clone(),
                self.pool.clone(),
                self.flush_every,
                flush_stop.clone(),
            );
            tokio::spawn(async move { plays.run(pool, every, stop).await })
        };
        // Webhooks are sent beside the requests, never in their way.
        let dispatcher = self.webhooks.clone().map(|settings| {
            tokio::spawn(webhooks::dispatch::run(
                self.state.clone(),
                settings,
                flush_stop.clone(),
            ))
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.max_buf_size(READ_BUFFER)
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(30));
        loop {
            // At the connection limit, stop accepting until one ends.
            let permit = tokio::select! {
                p = self.connections.clone().acquire_owned() => p.expect("never closed"),
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let service = TowerToHyperService::new(self.router.clone());
            // No upgrades: the API has no WebSocket or CONNECT routes.
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        if tokio::time::timeout(self.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                secs = self.shutdown_grace.as_secs(),
                "requests still in flight at the shutdown deadline; stopping anyway"
            );
        }
        flush_stop.cancel();
        let _ = flusher.await;
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        Ok(())
    }
}

/// Most a connection buffers of a request it has not yet handed to the handler.
const READ_BUFFER: usize = 32 << 10;

pub fn router(state: AppState) -> Router {
    let api_cors = cors::api(&state.cors_origins);
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .merge(api_routes().merge(tus_routes()).layer(api_cors))
        .split_for_parts();
    let doc: Arc<str> = serde_json::to_string(&doc)
        .expect("the OpenAPI description serialises")
        .into();
    routes
        .route("/", get(web::index))
        .route("/app.js", get(web::app))
        .route("/vendor/{name}", get(web::vendor))
        .route("/metrics", get(|| async { vtx_infra::metrics::render() }))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .merge(
            // Described by `media::serve_doc`: `{*key}` has no OpenAPI spelling.
            Router::new()
                .route("/v1/media/{*key}", get(media::serve))
                .layer(cors::playback()),
        )
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The API a browser page may call from a configured origin; each handler carries its OpenAPI
/// description.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(uploads::grant))
        .routes(routes!(uploads::create))
        .routes(routes!(uploads::show, uploads::abort))
        .routes(routes!(uploads::put_chunk))
        .routes(routes!(uploads::complete))
        .routes(routes!(status::job))
        .routes(routes!(status::video))
        .routes(routes!(playback::choose_rendition))
        .routes(routes!(events::video_events))
        .routes(routes!(plays::record))
        .routes(routes!(plays::hot))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(experiments::create))
        .routes(routes!(experiments::report))
        .routes(routes!(experiments::stop))
        .routes(routes!(experiments::assignment))
        .routes(routes!(experiments::report_plays))
}

fn tus_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tus::create, tus::options))
        // The same with a trailing slash, as some clients send it.
        .route("/v1/tus/", post(tus::create).options(tus::options))
        .routes(routes!(tus::head, tus::patch, tus::terminate))
        .layer(axum::middleware::from_fn(tus::resumable_header))
}

/// Parses a path id, answering 404 with `code` for anything that is not one.
pub(crate) fn parse_id<T: std::str::FromStr>(
    raw: &str,
    code: &'static str,
    what: &str,
) -> ApiResult<T> {
    raw.parse().map_err(|_| ApiError::not_found(code, what))
}

pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
