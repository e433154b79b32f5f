//! `vtx upload`: a file sent as a phone sends it. The file is cut into GOP-aligned MPEG-TS
//! chunks by remuxing (no re-encode), chunks go up several at once, each retried with backoff,
//! and a state file lets a killed upload resume where it stopped. `live` paces the chunks at
//! the video's own rate, as a phone that is still recording would send them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vtx_domain::UploadId;
use vtx_domain::api::CreateUpload;

use crate::retry::retry;
use crate::{Chunk, Client, CutError, Progress, UploadReport};

#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Shortest chunk, in seconds of video; chunks end at the first keyframe after it.
    pub chunk_seconds: f64,
    /// Chunks in flight at once.
    pub concurrency: usize,
    /// Send each chunk only once the video has "recorded" up to its end (real-time pace).
    pub live: bool,
    /// Where the resume state lives; `None` keeps none.
    pub state_dir: Option<PathBuf>,
    /// The uploader's follower count, for the hotness prediction.
    pub followers: Option<u64>,
    /// The video plays from signed, expiring URLs only.
    pub signed_playback: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunk_seconds: 2.0,
            concurrency: 4,
            live: false,
            state_dir: None,
            followers: None,
            signed_playback: false,
        }
    }
}

impl UploadOptions {
    /// The default state directory: `VTX_STATE_DIR`, else `~/.local/state/vtx`.
    pub fn default_state_dir() -> Option<PathBuf> {
        std::env::var_os("VTX_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/vtx/uploads"))
            })
    }
}

/// What survives a killed upload.
#[derive(Serialize, Deserialize)]
struct ResumeState {
    upload_id: UploadId,
    upload_token: String,
}

pub(crate) async fn run(
    client: &Client,
    path: &Path,
    opts: &UploadOptions,
    progress: Progress<'_>,
) -> anyhow::Result<UploadReport> {
    let dir = tempfile::tempdir()?;
    let Some(cutter) = client.cutter.clone() else {
        return crate::tus::upload_whole(client, path, progress).await;
    };
    let (chunks, rotation) = {
        let (input, out, secs) = (
            path.to_path_buf(),
            dir.path().to_path_buf(),
            opts.chunk_seconds,
        );
        let cut = tokio::task::spawn_blocking(move || cutter.cut(&input, &out, secs)).await?;
        match cut {
            Ok(cut) => (cut.chunks, cut.rotation),
            Err(CutError::Unreadable(e)) => {
                return Err(e.context(format!("cutting {}", path.display())));
            }
            // The service transcodes what it can and names what it cannot with a stable code.
            Err(CutError::Unchunkable(why)) => {
                tracing::info!(%why, "cannot cut into chunks; sending the file whole over tus");
                return crate::tus::upload_whole(client, path, progress).await;
            }
        }
    };
    let total: u64 = chunks.iter().map(|c| c.bytes).sum();
    let state_file = match &opts.state_dir {
        Some(d) => Some(d.join(format!("{}.json", state_key(path, opts).await?))),
        None => None,
    };

    // Resume the session a killed run left, if it is still open.
    let mut stored: Vec<(u32, String)> = Vec::new();
    let mut state = None;
    if let Some(f) = &state_file
        && let Ok(text) = tokio::fs::read_to_string(f).await
        && let Ok(s) = serde_json::from_str::<ResumeState>(&text)
    {
        match client
            .with_token(s.upload_token.as_str())
            .upload(s.upload_id)
            .await
        {
            Ok(view) if view.state == "open" || view.state == "completed" => {
                tracing::info!(upload_id = %s.upload_id, chunks = view.chunks.len(), "resuming");
                stored = view
                    .chunks
                    .into_iter()
                    .map(|c| (c.index, c.sha256))
                    .collect();
                state = Some(s);
            }
            Ok(view) => {
                tracing::info!(state = %view.state, "previous session ended; starting anew")
            }
            Err(e) => tracing::info!(error = %e, "previous session unusable; starting anew"),
        }
    }
    let state = match state {
        Some(s) => s,
        None => {
            // The chunks cannot carry the source's rotation: declare it.
            let created = client
                .create_upload_with(&CreateUpload {
                    rotation: Some(rotation),
                    followers: opts.followers,
                    signed_playback: opts.signed_playback.then_some(true),
                })
                .await?;
            if let Some(c) = chunks.iter().find(|c| c.bytes > created.max_chunk_bytes) {
                anyhow::bail!(
                    "chunk {} holds {} bytes (one GOP or more), over the gateway's limit of {}",
                    c.index,
                    c.bytes,
                    created.max_chunk_bytes
                );
            }
            let s = ResumeState {
                upload_id: created.id,
                upload_token: created.upload_token,
            };
            if let Some(f) = &state_file {
                write_private(f, &serde_json::to_vec(&s)?).await?;
            }
            s
        }
    };
    let id = state.upload_id;
    // Act with the session's own token from here on, as an app does.
    let this = client.with_token(state.upload_token.as_str());

    let sent = AtomicU64::new(0);
    let started = Instant::now();
    let first = chunks[0].start_seconds;
    let mut resumed = 0u32;
    let mut to_send = Vec::new();
    for c in &chunks {
        // Only a chunk the gateway already holds is read here (to compare); the others are
        // read when sent, so memory holds at most `concurrency` chunks.
        if let Some((_, held)) = stored.iter().find(|(i, _)| *i == c.index)
            && *held == hex::encode(Sha256::digest(tokio::fs::read(&c.path).await?))
        {
            resumed += 1;
            sent.fetch_add(c.bytes, Ordering::Relaxed);
            continue;
        }
        // New, or a different chunk at this index (the gateway will say 409; let it).
        to_send.push(c.clone());
    }
    progress(sent.load(Ordering::Relaxed), total);
    let results: Vec<anyhow::Result<Instant>> = futures_util::stream::iter(to_send)
        .map(|c: Chunk| {
            let (this, sent) = (&this, &sent);
            async move {
                if opts.live {
                    let due = Duration::from_secs_f64((c.end_seconds - first).max(0.0));
                    tokio::time::sleep_until((started + due).into()).await;
                }
                let data = Bytes::from(tokio::fs::read(&c.path).await?);
                this.put_chunk_retrying(id, c.index, data).await?;
                let done = sent.fetch_add(c.bytes, Ordering::Relaxed) + c.bytes;
                progress(done, total);
                Ok(Instant::now())
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut last_chunk_stored = started;
    for r in results {
        last_chunk_stored = last_chunk_stored.max(r?);
    }

    let n = chunks.len() as u32;
    let completed = retry("completing the upload", || this.complete(id, Some(n))).await?;
    let completed_at = Instant::now();
    if let Some(f) = &state_file {
        let _ = tokio::fs::remove_file(f).await;
    }
    Ok(UploadReport {
        completed,
        upload_id: id,
        chunks: n,
        bytes: total,
        resumed_chunks: resumed,
        last_chunk_stored,
        completed_at,
    })
}

/// Names the state file after the file (path, size, modification time) and the chunking, so
/// a changed file never resumes an old session.
async fn state_key(path: &Path, opts: &UploadOptions) -> anyhow::Result<String> {
    let canonical = tokio::fs::canonicalize(path).await?;
    let meta = tokio::fs::metadata(path).await?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(canonical.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    h.update(opts.chunk_seconds.to_le_bytes());
    Ok(hex::encode(&h.finalize()[..12]))
}

/// Writes the resume state (it holds the upload token) readable by its owner only: the file
/// 0600, its directory 0700.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    use tokio::io::AsyncWriteExt;
    if let Some(d) = path.parent() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        let d = d.to_path_buf();
        tokio::task::spawn_blocking(move || b.create(d)).await??;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await?;
    f.write_all(bytes).await?;
    f.flush().await
}
