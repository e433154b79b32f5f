//! The REST API's bodies: serialised by the gateway, parsed by the client, so both sides share
//! one definition.

use serde::{Deserialize, Serialize};

use crate::{ExtremeState, JobId, JobState, TierState, UploadId, UploadState, VideoId, VideoState};

/// Every error response: `{"error": {"code": "...", "message": "..."}}`. `code` is stable.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `POST /v1/upload-tokens` (service token): a grant an app uses to open upload sessions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantRequest {
    /// Who the app acts for (your user id); kept for logs.
    #[serde(default)]
    pub sub: Option<String>,
    /// Lifetime in seconds (default `VTX_GRANT_TTL_SECS`, at most one day).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The uploader's follower count, signed into the grant: sessions it opens record it (an
    /// app cannot state one of its own).
    #[serde(default)]
    pub followers: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantIssued {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/uploads` (the body is optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateUpload {
    /// Clockwise degrees (0, 90, 180, 270) the video is to be turned for display. MPEG-TS
    /// chunks cannot say it, so a client whose source carries a rotation declares it here.
    #[serde(default)]
    pub rotation: Option<u32>,
    /// The uploader's follower count at upload time: above `VTX_EXTREME_FOLLOWERS` the video
    /// is predicted hot and gets an extreme encode right after its high tier. Taken from a
    /// service token's request, or from the grant (signed by the service); an app holding a
    /// grant that states another count is refused (403).
    #[serde(default)]
    pub followers: Option<u64>,
    /// This video's playback URLs are signed and expire (`VTX_PLAYBACK_URL_TTL_SECS`); with
    /// `VTX_SIGNED_PLAYBACK` every video's are.
    #[serde(default)]
    pub signed_playback: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadCreated {
    pub id: UploadId,
    /// Bearer token for this session alone (chunks, status, complete, abort); it expires with
    /// the session.
    pub upload_token: String,
    /// RFC 3339.
    pub expires_at: String,
    pub max_chunk_bytes: u64,
    pub max_chunks: u32,
    pub max_upload_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkView {
    pub index: u32,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadView {
    pub id: UploadId,
    pub state: UploadState,
    pub expires_at: String,
    pub bytes: u64,
    pub chunks: Vec<ChunkView>,
    pub video_id: Option<VideoId>,
    pub job_id: Option<JobId>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompleteRequest {
    /// How many chunks the client sent; the server refuses to complete with any missing.
    pub chunks: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadCompleted {
    pub video_id: VideoId,
    pub job_id: JobId,
    pub source_bytes: u64,
}

/// Progress of one tier of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TierView {
    pub tier: String,
    /// waiting, encoding, merging, done, failed.
    pub state: TierState,
    pub slices_done: u32,
    pub slices_total: u32,
    pub error: Option<ErrorDetail>,
    pub started_at: Option<String>,
    pub encoded_at: Option<String>,
    pub finished_at: Option<String>,
    /// Time encoding slices (start to last slice), then merging (to live), in milliseconds.
    pub encode_ms: Option<u64>,
    pub merge_ms: Option<u64>,
    /// Frames of the source this tier could not decode and concealed (the frame before shown
    /// again in their place).
    #[serde(default)]
    pub concealed_video_frames: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub id: JobId,
    pub video_id: VideoId,
    pub state: JobState,
    pub attempts: u32,
    pub error: Option<ErrorDetail>,
    /// In order: the first publishes, each later one replaces the one before.
    pub tiers: Vec<TierView>,
    /// Audio frames of the source that could not be decoded and were concealed with silence.
    #[serde(default)]
    pub concealed_audio_frames: u64,
    /// Waiting in the queue and planning (created to scheduled), in milliseconds.
    pub planning_ms: Option<u64>,
    pub created_at: String,
    pub scheduled_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenditionView {
    pub name: String,
    pub container: String,
    /// "h264", "hevc" or "av1".
    pub codec: String,
    /// RFC 6381, e.g. "avc1.64001F".
    pub codec_string: Option<String>,
    /// Bytes of this MP4 a player needs for its first 3 seconds (for autoplay prefetch).
    pub prefetch_bytes_3s: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_ms: u64,
    pub size_bytes: u64,
    pub bitrate: u64,
    pub url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Playback {
    /// HLS master playlist listing every rendition; for a client that declared HEVC/AV1, the
    /// one that also lists the added extreme variants of those codecs (players pick by
    /// `CODECS`).
    pub hls: Option<String>,
    /// Smallest first.
    pub mp4: Vec<RenditionView>,
    pub cover: Option<String>,
    /// HEVC/AV1 renditions of a hot video, smaller than the H.264 ones at equal quality; only
    /// for clients that declare they decode them (`?codecs=hevc,av1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<RenditionView>,
}

/// `GET /v1/videos/{id}/playback`: the rendition this player should load, by the rule of
/// `vtx_domain::playback`, with the others it could fall back to.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybackChoice {
    pub video_id: crate::VideoId,
    /// The rendition to load (an MP4, or an HLS media playlist while a live-ingest tier has
    /// no MP4 yet); `prefetch_bytes_3s` is what to fetch ahead for autoplay.
    pub chosen: RenditionView,
    /// The HLS master playlist for an adaptive player (with the declared codecs' variants).
    pub hls: Option<String>,
    pub cover: Option<String>,
    /// Every other rendition the client decodes, smallest bitrate first.
    pub alternatives: Vec<RenditionView>,
    /// Why: the player's size in device pixels, the height the picture is shown at, and
    /// whether the cellular cap stepped the choice down.
    pub player_width: u32,
    pub player_height: u32,
    pub shown_height: u32,
    pub capped: bool,
}

/// A video's extreme encode: why it was picked, where it stands, and what each rendition
/// saved against the high tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtremeView {
    /// `queued`, `encoding`, `added`, `rejected` or `failed`.
    pub state: ExtremeState,
    /// `hot` or `followers`.
    pub reason: String,
    /// Plays over the window when picked, or the follower count.
    pub score: u64,
    /// Per rendition: bitrate, saving, PSNR and SSIM next to the high tier's, accepted or why
    /// not.
    #[serde(default)]
    pub verdicts: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VideoView {
    pub id: VideoId,
    pub state: VideoState,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<u64>,
    pub duration_ms: Option<u64>,
    pub source_bytes: u64,
    pub error: Option<ErrorDetail>,
    /// Present once the video is published.
    pub playback: Option<Playback>,
    /// Which tier viewers get now ("fast", then "high" once it replaced it).
    pub live_tier: Option<String>,
    pub published_at: Option<String>,
    /// The newest job working on this video.
    pub job_id: Option<JobId>,
    /// Frames of the source that could not be decoded and were concealed (by the newest job),
    /// when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concealed: Option<crate::damage::Concealed>,
    /// Present once the video was picked for an extreme encode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extreme: Option<ExtremeView>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/plays` (service token): a batch of play events, at most `VTX_MAX_PLAYS_PER_BATCH`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaysRequest {
    pub plays: Vec<PlayEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlayEvent {
    pub video_id: String,
    /// RFC 3339; now when absent. Plays older than the longest hotness window (or more than a
    /// minute ahead) are refused with `play-outside-window`.
    #[serde(default)]
    pub at: Option<String>,
    /// Optional, kept for logs only.
    #[serde(default)]
    pub client: Option<ClientInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientInfo {
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub app_version: Option<String>,
}

/// The answer to a batch: how many plays were counted and which were refused, by position.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaysAccepted {
    pub accepted: u32,
    pub rejected: Vec<PlayRejected>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlayRejected {
    pub index: u32,
    /// `invalid-video-id`, `video-not-found`, `invalid-time`, `play-outside-window`.
    pub code: String,
}

/// `GET /v1/hot?limit=N` (service token): the most played videos over the tracker's window.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HotVideos {
    pub window_secs: u64,
    pub videos: Vec<HotVideo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HotVideo {
    pub video_id: VideoId,
    pub plays: u64,
    /// State of its extreme encode, if one was requested.
    pub extreme: Option<ExtremeState>,
}
