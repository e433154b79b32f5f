//! Object keys: where each piece of a job lives in the bucket. One place, so every service
//! agrees.

use crate::{JobId, Tier, UploadId, VideoId};

/// Everything an upload session stored (its chunks or tus parts).
pub fn upload(upload: UploadId) -> String {
    format!("uploads/{upload}/")
}

/// One attempt at storing part `index` of an upload (a chunk, or a tus PATCH's bytes): each
/// attempt writes its own object, and the database decides which one counts.
pub fn upload_part(upload: UploadId, index: u32, attempt: uuid::Uuid) -> String {
    format!("{}chunks/{index:05}-{attempt}", self::upload(upload))
}

/// The assembled upload.
pub fn source(video: VideoId) -> String {
    format!("sources/{video}/source")
}

/// Scratch of a job (slices, shared audio, encoded slices); deleted once the job ends.
pub fn work(job: JobId) -> String {
    format!("work/{job}/")
}

pub fn slice(job: JobId, index: u32) -> String {
    format!("work/{job}/slices/{index:05}.mp4")
}

pub fn audio(job: JobId) -> String {
    format!("work/{job}/audio.m4a")
}

/// Directory (prefix) of a tier's encoded slices.
pub fn encoded(job: JobId, tier: Tier) -> String {
    format!("work/{job}/{tier}/")
}

/// Everything viewers fetch for a video, every job and tier of it.
pub fn video(video: VideoId) -> String {
    format!("videos/{video}/")
}

/// What viewers fetch for one tier of one job: MP4s, `hls/`, `cover.jpg`. Versioned by job and
/// tier, so a new tier is written beside the live one, never over it.
pub fn tier_output(video: VideoId, job: JobId, tier: Tier) -> String {
    format!("{}{job}/{tier}/", self::video(video))
}

/// Where a live-ingest upload's chunk `index` puts rendition `name`'s HLS init and segments: in
/// the output of `tier` (fast: its encode; instant: the chunk remuxed) of the job the upload
/// reserved, beside the playlists that list them.
pub fn chunk_hls(video: VideoId, job: JobId, tier: Tier, name: &str, index: u32) -> String {
    format!("{}hls/{name}/c{index:05}/", tier_output(video, job, tier))
}
