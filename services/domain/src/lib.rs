//! Domain of vtx: what an upload, a video, a job and a rendition are, which states they move
//! through, and the small typed messages the services pass over the broker.
//!
//! This crate performs no I/O and depends on no adapter (no sqlx, lapin, aws or ffmpeg), so the
//! rules here can be read and tested on their own.

pub mod api;
pub mod damage;
pub mod error_code;
pub mod experiments;
pub mod hls;
pub mod hotness;
pub mod ids;
pub mod keys;
pub mod ladder;
pub mod live_ingest;
pub mod messages;
pub mod plan;
pub mod playback;
pub mod quality;
pub mod slicing;
pub mod state;
mod text;
pub mod webhooks;

pub use error_code::ErrorCode;
pub use ids::{ChunkIndex, JobId, UploadId, VideoId};
pub use ladder::{LadderLimits, Rung, plan_ladder, plan_ladder_within};
pub use messages::Task;
pub use plan::{Container, JobPlan, Tier};
pub use quality::QualityTarget;
pub use slicing::{Grid, SliceWindow, plan_slices, plan_slices_on_grid, slice_seconds_for};
pub use state::{
    ChunkEncodeState, DeliveryState, ExtremeState, JobKind, JobState, Lifecycle, SliceState,
    TierState, UploadProtocol, UploadState, VideoState,
};
