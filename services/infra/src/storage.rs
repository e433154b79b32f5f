//! S3-compatible object storage through aws-sdk-s3: the same code talks to AWS, MinIO, Garage or
//! the local `s3s-fs` (endpoint override, path-style addressing). Bodies stream; nothing here
//! holds a whole object in memory.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{ExtraRoots, S3Config};

/// Size of the parts `concat` uploads (S3 wants at least 5 MiB for all but the last).
const PART_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    #[error("the requested range cannot be served")]
    InvalidRange,
    #[error("object store error: {0}")]
    Other(String),
}

fn other<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> StorageError + '_ {
    move |e| StorageError::Other(format!("{context}: {e}"))
}

fn classify<E, R>(context: &str, err: SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(se) = &err {
        match se.err().code() {
            Some("NoSuchKey" | "NotFound" | "NoSuchBucket") => return StorageError::NotFound,
            Some("InvalidRange") => return StorageError::InvalidRange,
            _ => {}
        }
        if let Some(raw) = format!("{:?}", se.raw())
            .split("status: StatusCode(")
            .nth(1)
            && raw.starts_with("404")
        {
            return StorageError::NotFound;
        }
    }
    StorageError::Other(format!(
        "{context}: {}",
        aws_sdk_s3::error::DisplayErrorContext(&err)
    ))
}

/// A downloaded object (or range of one), its body still streaming.
pub struct Object {
    pub body: ByteStream,
    pub content_length: u64,
    pub content_range: Option<String>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
}

#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
    prefix: String,
}

impl ObjectStore {
    /// A store on `cfg`'s bucket; an `https://` endpoint is trusted with the system's roots
    /// and `roots`.
    pub fn new(cfg: &S3Config, roots: &ExtraRoots) -> Self {
        let mut trust = tls::TrustStore::default();
        if let Some(pem) = roots.pem() {
            trust = trust.with_pem_certificate(pem.as_bytes());
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(
                tls::TlsContext::builder()
                    .with_trust_store(trust)
                    .build()
                    .expect("a TLS context from a trust store"),
            )
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(&cfg.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &cfg.access_key,
                cfg.secret_key.expose(),
                None,
                None,
                "vtx-config",
            ))
            .http_client(http)
            // Plain bodies: no aws-chunked trailers, which not every S3-compatible server reads.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            prefix: cfg.key_prefix.clone(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        if self.check().await.is_ok() {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(classify("creating the bucket", e)),
        }
    }

    /// Readiness: the bucket answers.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("checking the bucket", e))
    }

    /// Streams `len` bytes from `rx` into an object. The sender side decides what arrives; a
    /// length that does not match makes the upload fail.
    pub async fn put_stream(
        &self,
        key: &str,
        len: u64,
        rx: mpsc::Receiver<io::Result<Bytes>>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let body = ByteStream::from_body_1_x(ChannelBody { rx, len });
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_length(len as i64)
            .content_type(content_type)
            .body(body)
            .customize()
            // The body streams once and cannot be read twice to compute its hash up front.
            .disable_payload_signing()
            // A phone on a weak link may take many minutes to send a chunk: the client's read
            // timeout would cut it off mid-body. The sender's own idle and total deadlines bound
            // this request instead.
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(5))
                        .disable_read_timeout()
                        .build(),
                ),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("storing an object", e))
    }

    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(other("reading a file"))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("storing a file", e))
    }

    /// Stores a small object held in memory (a playlist).
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("storing an object", e))
    }

    /// Uploads every file under `dir` to `prefix` + its relative path, several at a time (a
    /// tier has hundreds of small HLS segments), each with the content type its name gives.
    pub async fn put_tree(&self, dir: &Path, prefix: &str) -> Result<(), StorageError> {
        use futures_util::{StreamExt, TryStreamExt};
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let mut entries = tokio::fs::read_dir(&d)
                .await
                .map_err(other("listing a directory"))?;
            while let Some(e) = entries
                .next_entry()
                .await
                .map_err(other("listing a directory"))?
            {
                let is_dir = e
                    .file_type()
                    .await
                    .map_err(other("listing a directory"))?
                    .is_dir();
                if is_dir {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        futures_util::stream::iter(files)
            .map(|path| async move {
                let rel = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                self.put_file(&format!("{prefix}{rel}"), &path, content_type(&rel))
                    .await
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Fetches an object, or the byte range given as an HTTP `Range` header value.
    pub async fn get(&self, key: &str, range: Option<&str>) -> Result<Object, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .set_range(range.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("fetching an object", e))?;
        Ok(Object {
            content_length: out.content_length().unwrap_or(0).max(0) as u64,
            content_range: out.content_range().map(str::to_string),
            content_type: out.content_type().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            body: out.body,
        })
    }

    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| classify("reading object metadata", e))?;
        Ok(out.content_length().unwrap_or(0).max(0) as u64)
    }

    /// Downloads an object to a local file; returns its size.
    pub async fn download_to(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let mut obj = self.get(key, None).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(other("creating a file"))?;
        let mut n = 0u64;
        while let Some(bytes) = obj.body.try_next().await.map_err(other("downloading"))? {
            n += bytes.len() as u64;
            file.write_all(&bytes)
                .await
                .map_err(other("writing a file"))?;
        }
        file.flush().await.map_err(other("writing a file"))?;
        Ok(n)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("deleting an object", e))
    }

    /// Deletes every object under `prefix` (one at a time: not every S3-compatible server has
    /// batch delete). Returns how many went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        Ok(keys.len() as u64)
    }

    /// Keys under `prefix` (relative to the store's own prefix), for tests and operators.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = self.key(prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify("listing objects", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|k| k.strip_prefix(&self.prefix).unwrap_or(k).to_string()),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    /// Writes the concatenation of `sources` to `dest` with a multipart upload, holding at most
    /// one part in memory. Returns the total size.
    pub async fn concat(
        &self,
        sources: &[String],
        dest: &str,
        content_type: &str,
    ) -> Result<u64, StorageError> {
        let dest_key = self.key(dest);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&dest_key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| classify("starting a multipart upload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Other("multipart upload without an id".into()))?
            .to_string();
        let result = self.concat_parts(sources, &dest_key, &upload_id).await;
        match result {
            Ok((parts, total)) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&dest_key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| classify("completing a multipart upload", e))?;
                Ok(total)
            }
            Err(e) => {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&dest_key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn concat_parts(
        &self,
        sources: &[String],
        dest_key: &str,
        upload_id: &str,
    ) -> Result<(Vec<CompletedPart>, u64), StorageError> {
        let mut parts = Vec::new();
        let mut buf = BytesMut::with_capacity(PART_BYTES);
        let mut total = 0u64;
        for src in sources {
            let mut obj = self.get(src, None).await?;
            while let Some(bytes) = obj
                .body
                .try_next()
                .await
                .map_err(other("reading a chunk"))?
            {
                total += bytes.len() as u64;
                buf.extend_from_slice(&bytes);
                while buf.len() >= PART_BYTES {
                    let part = buf.split_to(PART_BYTES).freeze();
                    parts.push(
                        self.upload_part(dest_key, upload_id, parts.len() as i32 + 1, part)
                            .await?,
                    );
                }
            }
        }
        if !buf.is_empty() || parts.is_empty() {
            let part = buf.freeze();
            parts.push(
                self.upload_part(dest_key, upload_id, parts.len() as i32 + 1, part)
                    .await?,
            );
        }
        Ok((parts, total))
    }

    async fn upload_part(
        &self,
        dest_key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(dest_key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify("uploading a part", e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }
}

/// An HTTP body fed by a bounded channel: the bridge from a request body (which is not `Sync`)
/// to the SDK, and the bound on memory per streamed object.
struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    len: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Content type by file name, for what the pipeline writes.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("jpg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
