//! A small tus 1.0 client: how `vtx upload` sends a file it cannot cut into MPEG-TS chunks
//! (VP9/AV1 in WebM, an edit list that hides frames) whole. Parts of 8 MiB, each with its
//! SHA-256 in `Upload-Checksum`; after a failed part it asks the server for the offset (HEAD)
//! and continues from there.

use std::path::Path;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use vtx_domain::api::UploadCompleted;
use vtx_domain::{JobId, UploadId, VideoId};

use crate::retry::retry;
use crate::{ApiFailure, Client, Progress, UploadReport};

const PART: u64 = 8 << 20;

fn header<T: std::str::FromStr>(resp: &reqwest::Response, name: &str) -> Option<T> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn fail(resp: reqwest::Response) -> anyhow::Error {
    ApiFailure::from_response(resp).await.into()
}

fn tus(client: &Client, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
    let req = client
        .http
        .request(method, url)
        .header("Tus-Resumable", "1.0.0");
    match &client.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

pub(crate) async fn upload_whole(
    client: &Client,
    path: &Path,
    progress: Progress<'_>,
) -> anyhow::Result<UploadReport> {
    let total = tokio::fs::metadata(path).await?.len();
    anyhow::ensure!(total > 0, "{} is empty", path.display());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let created = tus(client, reqwest::Method::POST, &client.url("/v1/tus/"))
        .header("Upload-Length", total.to_string())
        .header("Upload-Metadata", format!("filename {}", b64.encode(name)))
        .send()
        .await?;
    if created.status() != reqwest::StatusCode::CREATED {
        return Err(fail(created).await);
    }
    let url: String = header(&created, "location")
        .ok_or_else(|| anyhow::anyhow!("tus creation gave no Location"))?;
    let upload_id: UploadId = url
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected tus Location {url}"))?;

    let mut file = tokio::fs::File::open(path).await?;
    let mut offset = 0u64;
    let mut parts = 0u32;
    let mut last = None;
    while offset < total {
        let n = PART.min(total - offset);
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = vec![0u8; n as usize];
        file.read_exact(&mut buf).await?;
        let data = Bytes::from(buf);
        let sum = b64.encode(Sha256::digest(&data));
        let at = offset;
        let resp = retry(&format!("tus part at {at}"), || {
            let (url, data, sum) = (&url, data.clone(), &sum);
            async move {
                let resp = tus(client, reqwest::Method::PATCH, url)
                    .header("Content-Type", "application/offset+octet-stream")
                    .header("Upload-Offset", at.to_string())
                    .header("Upload-Checksum", format!("sha256 {sum}"))
                    .body(data)
                    .send()
                    .await?;
                if resp.status() == reqwest::StatusCode::NO_CONTENT {
                    Ok(resp)
                } else {
                    Err(fail(resp).await)
                }
            }
        })
        .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // A part that reached the server before the answer was lost: ask where it is.
                let head = tus(client, reqwest::Method::HEAD, &url).send().await?;
                match header::<u64>(&head, "upload-offset") {
                    Some(o) if o > offset => {
                        offset = o;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
        };
        offset = header(&resp, "upload-offset").unwrap_or(offset + n);
        parts += 1;
        progress(offset, total);
        last = Some(resp);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("nothing was sent"))?;
    let video_id: VideoId = header(&last, "vtx-video-id")
        .ok_or_else(|| anyhow::anyhow!("the finished tus upload named no video"))?;
    let job_id: JobId = header(&last, "vtx-job-id")
        .ok_or_else(|| anyhow::anyhow!("the finished tus upload named no job"))?;
    let now = Instant::now();
    Ok(UploadReport {
        completed: UploadCompleted {
            video_id,
            job_id,
            source_bytes: total,
        },
        upload_id,
        chunks: parts,
        bytes: total,
        resumed_chunks: 0,
        last_chunk_stored: now,
        completed_at: now,
    })
}
