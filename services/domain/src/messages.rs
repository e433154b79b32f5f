//! Messages carried by the broker. They hold ids only: PostgreSQL is the truth, and a handler
//! reads the current state before acting, so a duplicate or stale message is harmless.

use serde::{Deserialize, Serialize};

use crate::JobId;

/// Logical queue names; the broker adapter prefixes them per deployment (or per test).
pub mod queue {
    /// New jobs, consumed by the scheduler.
    pub const JOBS: &str = "jobs";
    /// Transcode tasks, consumed by workers.
    pub const TRANSCODE: &str = "transcode";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// A job row was created; the scheduler plans it.
    JobCreated { job_id: JobId },
    /// Transcode a whole video (slicing comes with the distributed pipeline).
    Transcode { job_id: JobId },
}

impl Task {
    /// The queue this task travels on.
    pub fn queue(&self) -> &'static str {
        match self {
            Task::JobCreated { .. } => queue::JOBS,
            Task::Transcode { .. } => queue::TRANSCODE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged() {
        let id = JobId::new();
        let json = serde_json::to_value(Task::Transcode { job_id: id }).unwrap();
        assert_eq!(json["type"], "transcode");
        assert_eq!(json["job_id"], id.to_string());
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back.queue(), queue::TRANSCODE);
    }
}
