//! States of uploads, videos and jobs, and the transitions allowed between them.
//!
//! The database stores the text form; every state change goes through `can_become`, so an
//! illegal move (a failed job becoming ready, say) is refused in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
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
