//! States of uploads, videos and jobs, and the transitions allowed between them.
//!
//! The database stores the text form; every state change goes through `can_become`, so an
//! illegal move (a failed job becoming ready, say) is refused in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        // Stored as the text form in a `text` column (with a CHECK of the same values).
        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'_>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(value.as_str()?.parse::<$name>()?)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }
    };
}

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

text_enum!(JobState {
    Queued => "queued",
    Scheduled => "scheduled",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

impl UploadState {
    pub fn can_become(self, next: UploadState) -> bool {
        use UploadState::*;
        matches!(
            (self, next),
            (Open, Completed) | (Open, Aborted) | (Open, Expired)
        )
    }
}

impl VideoState {
    pub fn can_become(self, next: VideoState) -> bool {
        use VideoState::*;
        // Once published, a video stays playable: a later tier's failure leaves it as it is.
        matches!((self, next), (Processing, Published) | (Processing, Failed))
    }
}

impl JobState {
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (Queued, Scheduled) => true,
            // A redelivered task runs again after a worker vanished mid-way.
            (Scheduled | Running, Running) => true,
            (Running, Succeeded) => true,
            (Queued | Scheduled | Running, Failed) => true,
            _ => false,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }

    /// States from which `next` may be reached, for guarded `UPDATE ... WHERE state = ANY(..)`.
    pub fn predecessors_of(next: JobState) -> Vec<&'static str> {
        ALL_JOB_STATES
            .into_iter()
            .filter(|s| s.can_become(next))
            .map(JobState::as_str)
            .collect()
    }
}

const ALL_JOB_STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Scheduled,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_job_states_never_move() {
        for from in [JobState::Succeeded, JobState::Failed] {
            for to in ALL_JOB_STATES {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn job_may_be_retried_while_running_but_not_requeued() {
        assert!(JobState::Running.can_become(JobState::Running));
        assert!(!JobState::Running.can_become(JobState::Queued));
        assert_eq!(
            JobState::predecessors_of(JobState::Succeeded),
            vec!["running"]
        );
    }

    #[test]
    fn video_is_published_or_failed_once() {
        assert!(VideoState::Processing.can_become(VideoState::Published));
        assert!(!VideoState::Failed.can_become(VideoState::Published));
        assert!(!VideoState::Published.can_become(VideoState::Failed));
    }

    #[test]
    fn text_forms_parse_back() {
        for s in ALL_JOB_STATES {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("bogus".parse::<UploadState>().is_err());
    }
}
