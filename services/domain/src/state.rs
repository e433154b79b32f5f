//! States of uploads, videos and jobs, and the transitions allowed between them.
//!
//! The database stores the text form. Each state column has a [`Lifecycle`]: its table of allowed
//! moves. The database layer binds `Lifecycle::sources(next)` into the guard of every `UPDATE`
//! that changes a state, so an illegal move (a failed job succeeding, say) is refused by the
//! same table everywhere, and no SQL text spells a state.

use std::fmt;

use crate::text::text_enum;

text_enum!(UploadState {
    Open => "open",
    Completed => "completed",
    Aborted => "aborted",
    Expired => "expired",
});

text_enum!(VideoState {
    Processing => "processing",
    Published => "published",
    Failed => "failed",
});

text_enum!(TierState {
    Waiting => "waiting",
    Encoding => "encoding",
    Merging => "merging",
    Done => "done",
    Failed => "failed",
});

text_enum!(SliceState {
    Queued => "queued",
    Running => "running",
    Done => "done",
});

text_enum!(UploadProtocol {
    Chunks => "chunks",
    Tus => "tus",
});

text_enum!(JobKind {
    Upload => "upload",
    Extreme => "extreme",
});

text_enum!(
    /// A stored chunk's encode while the upload arrives (`upload_chunks.encode_state`).
    ChunkEncodeState {
    Deferred => "deferred",
    Queued => "queued",
    Running => "running",
    Done => "done",
    Failed => "failed",
});

text_enum!(
    /// A video's request for an extreme encode (`extreme_requests.state`).
    ExtremeState {
    Queued => "queued",
    Encoding => "encoding",
    Added => "added",
    Rejected => "rejected",
    Failed => "failed",
});

text_enum!(
    /// One webhook endpoint's copy of an event (`webhook_deliveries.state`).
    DeliveryState {
    Pending => "pending",
    Delivered => "delivered",
    Failed => "failed",
});

text_enum!(JobState {
    Queued => "queued",
    Scheduled => "scheduled",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// The allowed moves of one state column.
pub trait Lifecycle: Copy + Eq + fmt::Display + fmt::Debug + Send + Sync + 'static {
    /// Every state, in declaration order.
    fn states() -> &'static [Self];
    /// Every allowed move, `(from, to)`. A state that is the `to` of no move is only ever
    /// inserted; one that is the `from` of none is terminal.
    const MOVES: &'static [(Self, Self)];

    fn can_become(self, next: Self) -> bool {
        Self::MOVES.contains(&(self, next))
    }

    /// The states from which `next` may be reached: the guard of a move to `next`.
    fn sources(next: Self) -> Vec<Self> {
        Self::MOVES
            .iter()
            .filter(|(_, to)| *to == next)
            .map(|(from, _)| *from)
            .collect()
    }

    /// No move leaves this state.
    fn is_terminal(self) -> bool {
        !Self::MOVES.iter().any(|(from, _)| *from == self)
    }

    /// The states no move leaves.
    fn terminal() -> Vec<Self> {
        Self::states()
            .iter()
            .copied()
            .filter(|s| s.is_terminal())
            .collect()
    }
}

macro_rules! lifecycle {
    ($name:ident { $(($from:ident, $to:ident)),+ $(,)? }) => {
        impl Lifecycle for $name {
            fn states() -> &'static [Self] {
                $name::ALL
            }
            const MOVES: &'static [(Self, Self)] = &[$(($name::$from, $name::$to)),+];
        }
    };
}

lifecycle!(UploadState {
    (Open, Completed),
    (Open, Aborted),
    (Open, Expired),
});

// Once published, a video stays playable: a later tier's swap changes what is live, not the
// state, and a later tier's failure leaves the video as it is.
lifecycle!(VideoState {
    (Processing, Published),
    (Processing, Failed),
});

lifecycle!(JobState {
    (Queued, Scheduled),
    // A job encoded while its upload arrived, with no later tier to plan, is done as soon as
    // its fast tier is live: it is never scheduled.
    (Queued, Succeeded),
    (Scheduled, Running),
    // A redelivered task runs again after a worker vanished mid-way.
    (Running, Running),
    (Running, Succeeded),
    (Queued, Failed),
    (Scheduled, Failed),
    (Running, Failed),
});

lifecycle!(TierState {
    (Waiting, Encoding),
    (Encoding, Merging),
    (Merging, Done),
    (Waiting, Failed),
    (Encoding, Failed),
    (Merging, Failed),
});

lifecycle!(SliceState {
    (Queued, Running),
    // A lease taken over after it expired, or renewed by its owner on redelivery.
    (Running, Running),
    // The reaper hands back a slice whose lease expired.
    (Running, Queued),
    (Running, Done),
});

lifecycle!(ChunkEncodeState {
    // Past the session's encode-ahead budget, a chunk waits for the upload to complete.
    (Deferred, Queued),
    (Queued, Running),
    (Running, Running),
    (Running, Queued),
    (Running, Done),
    (Queued, Failed),
    (Running, Failed),
});

lifecycle!(ExtremeState {
    (Queued, Encoding),
    (Encoding, Added),
    // Every candidate failed the size or quality bar.
    (Encoding, Rejected),
    (Queued, Failed),
    (Encoding, Failed),
});

lifecycle!(DeliveryState {
    // A failed attempt with attempts left: it waits for its next try.
    (Pending, Pending),
    (Pending, Delivered),
    // The retry schedule ran out.
    (Pending, Failed),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_job_states_never_move() {
        for from in [JobState::Succeeded, JobState::Failed] {
            for to in JobState::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
        assert_eq!(
            JobState::terminal(),
            vec![JobState::Succeeded, JobState::Failed]
        );
    }

    #[test]
    fn job_may_be_retried_while_running_but_not_requeued() {
        assert!(JobState::Running.can_become(JobState::Running));
        assert!(!JobState::Running.can_become(JobState::Queued));
        assert!(!JobState::Scheduled.can_become(JobState::Succeeded));
        assert_eq!(
            JobState::sources(JobState::Scheduled),
            vec![JobState::Queued]
        );
    }

    #[test]
    fn video_is_published_or_failed_once() {
        assert!(VideoState::Processing.can_become(VideoState::Published));
        assert!(!VideoState::Failed.can_become(VideoState::Published));
        assert!(!VideoState::Published.can_become(VideoState::Failed));
        assert!(!VideoState::Published.can_become(VideoState::Published));
    }

    #[test]
    fn text_forms_parse_back() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        assert!("bogus".parse::<UploadState>().is_err());
    }

    fn every_state_is_reachable_or_initial<S: Lifecycle>(initial: &[S]) {
        for s in S::states() {
            assert!(
                initial.contains(s) || !S::sources(*s).is_empty(),
                "{s} can be neither inserted nor reached"
            );
        }
    }

    #[test]
    fn every_state_is_reachable() {
        every_state_is_reachable_or_initial(&[UploadState::Open]);
        every_state_is_reachable_or_initial(&[VideoState::Processing]);
        every_state_is_reachable_or_initial(&[JobState::Queued]);
        every_state_is_reachable_or_initial(&[TierState::Waiting, TierState::Encoding]);
        every_state_is_reachable_or_initial(&[SliceState::Queued]);
        every_state_is_reachable_or_initial(&[
            ChunkEncodeState::Deferred,
            ChunkEncodeState::Queued,
        ]);
        every_state_is_reachable_or_initial(&[ExtremeState::Queued]);
        every_state_is_reachable_or_initial(&[DeliveryState::Pending]);
    }
}
