//! A request body streamed into the object store under the body deadlines (idle and total),
//! hashed on the way (SHA-256, CRC32C, SHA-1 for tus), optionally copied to a local file.

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::staged::Staged;
use crate::{ApiError, ApiResult, AppState};

/// What streaming a body gave: its checksums.
pub(crate) struct Streamed {
    pub sha256: String,
    pub crc32c: u32,
    pub sha1: Option<[u8; 20]>,
}

/// Streams the request body into the store and into `copy` (a local file the chunk is checked
/// from) while hashing it; returns the hex SHA-256 and the CRC32C. Memory stays bounded: the
/// channel holds a few body frames at most. On failure the caller discards `object`.
pub(crate) async fn stream_to_store(
    state: &AppState,
    object: &Staged,
    len: u64,
    body: Body,
    copy: Option<&std::path::Path>,
    want_sha1: bool,
) -> ApiResult<Streamed> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let mut file = match copy {
        // Unbuffered: body frames are already tens of KiB, and a buffer per request adds up
        // over a thousand concurrent uploads.
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let (idle, total) = (state.limits.body_idle, state.limits.body_total);
    let pump = async move {
        let mut hasher = Sha256::new();
        let mut sha1 = want_sha1.then(sha1::Sha1::new);
        let mut crc = 0u32;
        let mut seen = 0u64;
        let mut stream = body.into_data_stream();
        let until = tokio::time::Instant::now() + total;
        let timed_out =
            |what: String| ApiError::new(StatusCode::REQUEST_TIMEOUT, "body-timeout", what);
        loop {
            // However slowly a body comes, it comes: only silence, or more than the total
            // allowed, ends it.
            let wait = idle.min(until.saturating_duration_since(tokio::time::Instant::now()));
            let frame = match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    let _ = tx.send(Err(std::io::Error::other("body timed out"))).await;
                    return Err(if tokio::time::Instant::now() >= until {
                        timed_out(format!(
                            "the body took longer than {} s (received {seen} of {len} bytes)",
                            total.as_secs()
                        ))
                    } else {
                        timed_out(format!(
                            "the body sent nothing for {} s (received {seen} of {len} bytes)",
                            idle.as_secs()
                        ))
                    });
                }
            };
            let bytes = match frame {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return Err(ApiError::bad_request(
                        "body-interrupted",
                        "the request body ended early",
                    ));
                }
            };
            seen += bytes.len() as u64;
            if seen > len {
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "body longer than Content-Length",
                    )))
                    .await;
                return Err(ApiError::bad_request(
                    "length-mismatch",
                    "the body is longer than Content-Length",
                ));
            }
            hasher.update(&bytes);
            crc = crc32c::crc32c_append(crc, &bytes);
            if let Some(h) = sha1.as_mut() {
                h.update(&bytes);
            }
            if let Some(f) = file.as_mut() {
                f.write_all(&bytes).await.map_err(ApiError::internal)?;
            }
            if tx.send(Ok(bytes)).await.is_err() {
                return Ok(None); // the store gave up; its error is reported below
            }
        }
        if seen != len {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "body shorter than Content-Length",
                )))
                .await;
            return Err(ApiError::bad_request(
                "length-mismatch",
                "the body is shorter than Content-Length",
            ));
        }
        if let Some(f) = file.as_mut() {
            f.flush().await.map_err(ApiError::internal)?;
        }
        Ok(Some(Streamed {
            sha256: hex::encode(hasher.finalize()),
            crc32c: crc,
            sha1: sha1.map(|h| h.finalize().into()),
        }))
    };
    let put = state
        .store
        .put_stream(object.key(), len, rx, "application/octet-stream");
    let (hashed, stored) = tokio::join!(pump, put);
    match (hashed, stored) {
        (Ok(Some(sha)), Ok(())) => Ok(sha),
        // The store failed (and stopped taking the body): a storage error, not the client's.
        (Ok(_), Err(e)) => Err(ApiError::storage(e)),
        (Ok(None), Ok(())) => Err(ApiError::internal("the store stopped taking the body")),
        (Err(e), _) => Err(e),
    }
}
