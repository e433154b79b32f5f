//! HTTP client for the vtx gateway: what `vtx upload` and `vtx status` use, and what the
//! end-to-end tests drive.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use vtx_domain::api::{
    ChunkView, CompleteRequest, CreateUpload, ErrorBody, GrantIssued, GrantRequest, HotVideos,
    JobView, PlaysAccepted, PlaysRequest, UploadCompleted, UploadCreated, UploadView, VideoView,
};
use vtx_domain::{JobId, UploadId, VideoId};

/// An error response from the gateway, with its stable code.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// How long the server asked to wait before trying again (`Retry-After`, in seconds).
    pub retry_after: Option<Duration>,
}

impl ApiFailure {
    /// The failure an error response describes (its JSON body's code and message).
    pub async fn from_response(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => ("http-error".to_string(), text),
        };
        Self {
            status,
            code,
            message,
            retry_after,
        }
    }

    /// Whether trying again may succeed: a server error, or a limit (429).
    pub fn is_transient(&self) -> bool {
        self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS
    }
}

/// Waiting for a video ended before it was published or failed.
#[derive(Debug, thiserror::Error)]
#[error("video {video} still {state} after {after:?}")]
pub struct WaitTimedOut {
    pub video: VideoId,
    pub state: vtx_domain::VideoState,
    pub after: Duration,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Bearer token sent with every API call: a service, grant or upload token.
    token: Option<std::sync::Arc<str>>,
    /// How files become chunks; without one they go whole over tus.
    cutter: Option<std::sync::Arc<dyn Cutter>>,
}

mod cut;
mod retry;
mod tus;
mod upload;

pub use cut::{Chunk, Cut, CutError, Cutter};
pub use upload::UploadOptions;

/// What an upload did, with its timings.
#[derive(Clone, Debug)]
pub struct UploadReport {
    pub completed: UploadCompleted,
    pub upload_id: UploadId,
    pub chunks: u32,
    pub bytes: u64,
    /// Chunks the gateway already held (a resumed upload).
    pub resumed_chunks: u32,
    /// When the gateway acknowledged the last chunk, and when the upload was completed.
    pub last_chunk_stored: std::time::Instant,
    pub completed_at: std::time::Instant,
}

/// Progress callback: (bytes sent, total bytes).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

impl Client {
    /// A client of the gateway at `base` (`http://` or `https://`; TLS trusts the system's
    /// roots, which honour `SSL_CERT_FILE`).
    pub fn new(base: impl Into<String>) -> Self {
        Self::trusting(base, &[]).expect("HTTP client builds without extra roots")
    }

    /// A client that also trusts the certificates in `ca_pem` (a private CA, or a gateway's
    /// self-signed certificate), besides the system's roots.
    pub fn trusting(base: impl Into<String>, ca_pem: &[u8]) -> anyhow::Result<Self> {
        // reqwest is built without its own crypto provider: the process uses ring, the one
        // sqlx and the S3 client already link. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let extra = if ca_pem.is_empty() {
            Vec::new()
        } else {
            reqwest::Certificate::from_pem_bundle(ca_pem)
                .map_err(|e| anyhow::anyhow!("reading the CA certificates: {e}"))?
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .tls_certs_merge(extra)
            .build()?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token: None,
            cutter: None,
        })
    }

    /// The same client, sending `token` as its bearer credential.
    pub fn with_token(&self, token: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// The same client, cutting files into chunks with `cutter` before it uploads them.
    pub fn with_cutter(self, cutter: std::sync::Arc<dyn Cutter>) -> Self {
        Self {
            cutter: Some(cutter),
            ..self
        }
    }

    /// A request to an API path, with the bearer token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn parse<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
        if resp.status().is_success() {
            return Ok(resp.json().await?);
        }
        Err(ApiFailure::from_response(resp).await.into())
    }

    /// Mints a grant token for an app (needs a service token).
    pub async fn grant(&self, req: &GrantRequest) -> anyhow::Result<GrantIssued> {
        Self::parse(
            self.request(reqwest::Method::POST, "/v1/upload-tokens")
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    pub async fn create_upload(&self) -> anyhow::Result<UploadCreated> {
        self.create_upload_with(&CreateUpload::default()).await
    }

    pub async fn create_upload_with(&self, req: &CreateUpload) -> anyhow::Result<UploadCreated> {
        Self::parse(
            self.request(reqwest::Method::POST, "/v1/uploads")
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    pub async fn upload(&self, id: UploadId) -> anyhow::Result<UploadView> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/v1/uploads/{id}"))
                .send()
                .await?,
        )
        .await
    }

    /// Sends one chunk with its CRC32C instead of a SHA-256.
    pub async fn put_chunk_crc32c(
        &self,
        id: UploadId,
        index: u32,
        data: Bytes,
        crc32c: u32,
    ) -> anyhow::Result<(StatusCode, ChunkView)> {
        let resp = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/uploads/{id}/chunks/{index}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header("x-vtx-chunk-crc32c", format!("{crc32c:08x}"))
            .body(data)
            .send()
            .await?;
        let status = resp.status();
        Ok((status, Self::parse(resp).await?))
    }

    /// Aborts an upload session.
    pub async fn abort(&self, id: UploadId) -> anyhow::Result<()> {
        let resp = self
            .request(reqwest::Method::DELETE, &format!("/v1/uploads/{id}"))
            .send()
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Self::parse::<serde_json::Value>(resp).await.map(|_| ())
    }

    /// Sends one chunk with its SHA-256; returns the status (201 new, 200 already stored).
    pub async fn put_chunk(
        &self,
        id: UploadId,
        index: u32,
        data: Bytes,
    ) -> anyhow::Result<(StatusCode, ChunkView)> {
        let sha = hex::encode(Sha256::digest(&data));
        self.put_chunk_with_sha(id, index, data, Some(&sha)).await
    }

    pub async fn put_chunk_with_sha(
        &self,
        id: UploadId,
        index: u32,
        data: Bytes,
        sha256: Option<&str>,
    ) -> anyhow::Result<(StatusCode, ChunkView)> {
        let mut req = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/uploads/{id}/chunks/{index}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        if let Some(sha) = sha256 {
            req = req.header("x-vtx-chunk-sha256", sha);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, Self::parse(resp).await?))
    }

    pub async fn complete(
        &self,
        id: UploadId,
        chunks: Option<u32>,
    ) -> anyhow::Result<UploadCompleted> {
        let resp = self
            .request(reqwest::Method::POST, &format!("/v1/uploads/{id}/complete"))
            .json(&CompleteRequest { chunks })
            .send()
            .await?;
        Self::parse(resp).await
    }

    pub async fn job(&self, id: JobId) -> anyhow::Result<JobView> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"))
                .send()
                .await?,
        )
        .await
    }

    /// The rendition a player should load (`query`: `form=feed&network=cellular&screen=390x844&dpr=3`).
    pub async fn playback(
        &self,
        id: VideoId,
        query: &str,
    ) -> anyhow::Result<vtx_domain::api::PlaybackChoice> {
        Self::parse(
            self.request(
                reqwest::Method::GET,
                &format!("/v1/videos/{id}/playback?{query}"),
            )
            .send()
            .await?,
        )
        .await
    }

    pub async fn video(&self, id: VideoId) -> anyhow::Result<VideoView> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/v1/videos/{id}"))
                .send()
                .await?,
        )
        .await
    }

    /// The video with the extreme renditions in `codecs` (e.g. `["hevc", "av1"]`) listed as
    /// alternatives, for a player that decodes them.
    pub async fn video_for(&self, id: VideoId, codecs: &[&str]) -> anyhow::Result<VideoView> {
        Self::parse(
            // Codec names are plain tokens: nothing to escape.
            self.request(
                reqwest::Method::GET,
                &format!("/v1/videos/{id}?codecs={}", codecs.join(",")),
            )
            .send()
            .await?,
        )
        .await
    }

    /// Sends a batch of play events (service token).
    pub async fn plays(&self, req: &PlaysRequest) -> anyhow::Result<PlaysAccepted> {
        Self::parse(
            self.request(reqwest::Method::POST, "/v1/plays")
                .json(req)
                .send()
                .await?,
        )
        .await
    }

    /// The most played videos (service token).
    pub async fn hot(&self, limit: u32) -> anyhow::Result<HotVideos> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/v1/hot?limit={limit}"))
                .send()
                .await?,
        )
        .await
    }

    /// Uploads a video file the way a phone does: cut into GOP-aligned MPEG-TS chunks by
    /// remuxing (no re-encode), several chunks in flight, each retried with backoff, resumable
    /// through a state file; then completes the upload. See [`upload`].
    pub async fn upload_file(
        &self,
        path: &Path,
        opts: &UploadOptions,
        progress: Progress<'_>,
    ) -> anyhow::Result<UploadCompleted> {
        Ok(upload::run(self, path, opts, progress).await?.completed)
    }

    /// As [`Client::upload_file`], with timings.
    pub async fn upload_video(
        &self,
        path: &Path,
        opts: &UploadOptions,
        progress: Progress<'_>,
    ) -> anyhow::Result<UploadReport> {
        upload::run(self, path, opts, progress).await
    }

    pub(crate) async fn put_chunk_retrying(
        &self,
        id: UploadId,
        index: u32,
        data: Bytes,
    ) -> anyhow::Result<()> {
        retry::retry(&format!("chunk {index}"), || {
            self.put_chunk(id, index, data.clone())
        })
        .await
        .map(|_| ())
    }

    /// Polls a video until it is published or failed, or `timeout` passes.
    pub async fn wait_for_video(
        &self,
        id: VideoId,
        timeout: Duration,
    ) -> anyhow::Result<VideoView> {
        self.wait_until(id, timeout, |v| {
            v.state == "published" || v.state == "failed"
        })
        .await
    }

    /// Polls a video until `tier` is live (or the video failed).
    pub async fn wait_for_tier(
        &self,
        id: VideoId,
        tier: &str,
        timeout: Duration,
    ) -> anyhow::Result<VideoView> {
        self.wait_until(id, timeout, |v| {
            v.live_tier.as_deref() == Some(tier) || v.state == "failed"
        })
        .await
    }

    async fn wait_until(
        &self,
        id: VideoId,
        timeout: Duration,
        done: impl Fn(&VideoView) -> bool,
    ) -> anyhow::Result<VideoView> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            // A poll that fails (the service restarting, say) is retried until the timeout.
            let v = match self.video(id).await {
                Ok(v) => v,
                Err(e) if tokio::time::Instant::now() < until => {
                    tracing::debug!(error = %e, "status poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if done(&v) {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= until {
                return Err(WaitTimedOut {
                    video: id,
                    state: v.state,
                    after: timeout,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Downloads a URL to a file (playback check).
    pub async fn download(&self, url: &str, to: &Path) -> anyhow::Result<u64> {
        let resp = self.http.get(url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        let bytes = resp.bytes().await?;
        tokio::fs::write(to, &bytes).await?;
        Ok(bytes.len() as u64)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
