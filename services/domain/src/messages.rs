//! Messages carried by the broker. They hold ids only: PostgreSQL is the truth, and a handler
//! reads the current state before acting, so a duplicate or stale message is harmless.

use serde::{Deserialize, Serialize};

use crate::{JobId, Tier, UploadId};

/// Logical queue names, one per task class; the broker adapter prefixes them per deployment (or
/// per test). Separate queues keep fast-tier work from waiting behind high-tier work.
pub mod queue {
    /// New jobs, consumed by the scheduler.
    pub const JOBS: &str = "jobs";
    /// Fast-tier slice encodes: what publishing waits on.
    pub const FAST_SLICES: &str = "slices.fast";
    /// High-tier slice encodes, after the fast tier is live.
    pub const HIGH_SLICES: &str = "slices.high";
    /// Extreme-tier slice encodes, lowest priority.
    pub const EXTREME_SLICES: &str = "slices.extreme";
    /// Merges that publish (the fast tier's, packaging it once all its slices are done): apart
    /// from the others so that publishing never waits behind a long high-tier merge.
    pub const FAST_MERGE: &str = "merge.fast";
    /// The other merges (high and extreme tiers) and background muxes of MP4s.
    pub const MERGE: &str = "merge";
    /// Where messages go after too many deliveries.
    pub const DEAD: &str = "dead";

    /// Every work queue (the dead-letter queue is declared apart).
    pub const WORK: [&str; 6] = [
        JOBS,
        FAST_SLICES,
        HIGH_SLICES,
        EXTREME_SLICES,
        FAST_MERGE,
        MERGE,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// A job row was created; the scheduler plans it.
    JobCreated { job_id: JobId },
    /// Encode one slice of a job's tier into every rendition of the tier.
    EncodeSlice {
        job_id: JobId,
        tier: Tier,
        index: u32,
    },
    /// Every slice of a tier is encoded: package it and put it live.
    Merge { job_id: JobId, tier: Tier },
    /// A media chunk of an upload still arriving was stored: encode it into the fast ladder
    /// and package its HLS segments (transcoding while the upload arrives).
    EncodeChunk { upload_id: UploadId, index: u32 },
    /// A live-ingest fast tier (or an instant tier) is live as HLS: mux its MP4 renditions in
    /// the background.
    MuxChunks { job_id: JobId },
}

impl Task {
    /// The queue this task travels on.
    pub fn queue(&self) -> &'static str {
        match self {
            Task::JobCreated { .. } => queue::JOBS,
            // The instant tier is never encoded; a slice of it travels as a fast one.
            Task::EncodeSlice {
                tier: Tier::Instant | Tier::Fast,
                ..
            } => queue::FAST_SLICES,
            Task::EncodeSlice {
                tier: Tier::High, ..
            } => queue::HIGH_SLICES,
            Task::EncodeSlice {
                tier: Tier::Extreme,
                ..
            } => queue::EXTREME_SLICES,
            Task::Merge {
                tier: Tier::Instant | Tier::Fast,
                ..
            } => queue::FAST_MERGE,
            Task::Merge { .. } | Task::MuxChunks { .. } => queue::MERGE,
            // Publishing waits on it exactly as on a fast slice.
            Task::EncodeChunk { .. } => queue::FAST_SLICES,
        }
    }

    /// The job the task belongs to (a chunk's encode belongs to an upload, not yet to a job).
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Task::JobCreated { job_id }
            | Task::EncodeSlice { job_id, .. }
            | Task::Merge { job_id, .. }
            | Task::MuxChunks { job_id } => Some(*job_id),
            Task::EncodeChunk { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged_and_routed_by_tier() {
        let id = JobId::new();
        let t = Task::EncodeSlice {
            job_id: id,
            tier: Tier::High,
            index: 3,
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["type"], "encode_slice");
        assert_eq!(json["tier"], "high");
        assert_eq!(json["index"], 3);
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back.queue(), queue::HIGH_SLICES);
        assert_eq!(
            Task::EncodeSlice {
                job_id: id,
                tier: Tier::Fast,
                index: 0
            }
            .queue(),
            queue::FAST_SLICES
        );
        assert_eq!(
            Task::Merge {
                job_id: id,
                tier: Tier::Fast
            }
            .queue(),
            queue::FAST_MERGE
        );
        assert_eq!(
            Task::Merge {
                job_id: id,
                tier: Tier::High
            }
            .queue(),
            queue::MERGE
        );
    }
}
