//! The vtx media engine, on FFmpeg's libraries through ffmpeg-next.
//!
//! Every function here blocks and may run for minutes: call it from `spawn_blocking` or a
//! dedicated thread, and pass a [`Deadline`] so that untrusted input cannot hold a thread forever.

mod audio;
mod cascade;
mod chunk;
mod conceal;
mod cover;
mod encoder;
mod error;
mod hls;
mod hw;
mod input;
mod live_ingest;
mod merge;
mod passthrough;
pub mod per_title;
mod pipeline;
mod priority;
mod probe;
mod quality;
mod remux;
mod split;
mod stages;
mod transcode;
mod vmaf;

use std::sync::Once;
use std::time::{Duration, Instant};

pub use audio::encode_audio;
pub use chunk::{ChunkError, ChunkInfo, CutChunk, cut_chunks, inspect_chunk, source_rotation};
pub use conceal::{Concealed, DamagePolicy};
pub use cover::write_cover;
pub use encoder::{Tier, VideoCodec, codec_string, tier_codecs};
pub use error::MediaError;
pub use hls::{Variant, master_playlist, playlist_bitrates};
pub use live_ingest::{chunk_hls_dir, encode_chunk};
pub use merge::{
    EncodedSlice, MergeReport, MergeRequest, merge_rendition, prefetch_bytes, remux_hls_to_mp4,
};
pub use passthrough::{SOURCE_RENDITION, remux_chunk, standard_chunk};
pub use pipeline::{
    EncodeOptions, Manifest, ManifestRendition, Packaged, PipelineRequest, Prepared, Progress,
    ProgressFn, Stage, encode_slice, encoded_slice_path, package, plan_job, plan_outputs, prepare,
    run_pipeline, verify_packaged,
};
pub use priority::{CpuClass, DEFERRED, LOWEST, spawn_in_class, spawn_low_priority};
pub use probe::{AudioInfo, Keyframe, Probe, VideoInfo, probe};
pub use quality::{Quality, measure, measure_window};
pub use split::{SliceFile, split_video};
pub use transcode::{
    FrameProgress, RenditionOutput, RenditionReport, TranscodeRequest, Window, can_encode_tier,
    detect_h264_encoders, transcode_ladder,
};
pub use vmaf::vmaf_tool;
pub use vtx_domain::live_ingest::InstantPolicy;

/// Limits applied to untrusted input before and while decoding it.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_duration: Duration,
    /// Pixels per frame (width x height).
    pub max_pixels: u64,
    pub max_file_bytes: u64,
    pub max_frames: u64,
}

/// The most pixels any decoder may make of one frame, whatever a stream declares (4096x2304).
pub const MAX_PIXELS: u64 = 4096 * 2304;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(60 * 60),
            max_pixels: MAX_PIXELS,
            max_file_bytes: 8 << 30,
            // One hour at 120 fps.
            max_frames: 60 * 60 * 120,
        }
    }
}

/// A point in time after which media work stops with [`MediaError::Timeout`].
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    pub fn none() -> Self {
        Self(None)
    }
    pub fn after(d: Duration) -> Self {
        Self(Instant::now().checked_add(d))
    }
    pub fn expired(&self) -> bool {
        self.0.is_some_and(|t| Instant::now() >= t)
    }
    pub(crate) fn check(&self) -> Result<(), MediaError> {
        if self.expired() {
            Err(MediaError::Timeout)
        } else {
            Ok(())
        }
    }
}

/// Initialises FFmpeg once per process and keeps its own logging to errors only.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        ffmpeg_next::init().expect("FFmpeg libraries failed to initialise");
        ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Error);
    });
}
