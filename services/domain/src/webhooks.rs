//! Webhooks as Standard Webhooks define them: events, the endpoints that receive them, and when
//! a failed delivery is tried again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::text::text_enum;

text_enum!(
    /// What happened (`webhook_events.event_type`).
    EventType {
    /// The first tier is live: the video plays.
    VideoPublished => "video.published",
    /// A later tier replaced the live one.
    VideoUpgraded => "video.upgraded",
    /// The video will not play (its first tier failed).
    VideoFailed => "video.failed",
    /// HEVC/AV1 renditions were added beside the H.264 ones.
    VideoExtremeAdded => "video.extreme_added",
    /// An upload session was left open past its expiry and removed.
    UploadExpired => "upload.expired",
});

/// `POST /v1/webhooks`, `PATCH /v1/webhooks/{id}` (service token).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// `https://` (or `http://`) URL receiving `POST`s; at most 2048 bytes.
    pub url: Option<String>,
    /// The event types it receives; empty or absent: every type.
    pub event_types: Option<Vec<EventType>>,
    /// `whsec_` + base64 of 24 to 64 random bytes; made by vtx when absent (create only).
    pub secret: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A registered endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointView {
    pub id: uuid::Uuid,
    pub url: String,
    pub event_types: Vec<EventType>,
    /// The signing secret (only in the answers to creating it and to `GET /v1/webhooks/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub description: String,
    pub enabled: bool,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint's copy of one event, as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    /// The `webhook-id` it is sent with (the event's id: the same on every attempt).
    pub event_id: uuid::Uuid,
    pub event_type: EventType,
    pub state: crate::DeliveryState,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

/// The body every delivery carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventBody {
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// The video's status body (`GET /v1/videos/{id}`) or, for `upload.expired`, the upload's.
    pub data: serde_json::Value,
}

/// The waits before each retry of a failed delivery: about a day in all, as Standard Webhooks
/// senders do (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
pub const DEFAULT_RETRY_SCHEDULE: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];

/// When a delivery that failed its `attempts`-th attempt is tried again: the schedule's wait,
/// spread by up to a fifth either way (`unit` in 0..1 picks where), so receivers that failed
/// together are not retried together. `None`: the schedule ran out and the delivery failed.
pub fn retry_after(attempts: u32, schedule: &[Duration], unit: f64) -> Option<Duration> {
    let wait = *schedule.get((attempts as usize).checked_sub(1)?)?;
    let spread = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
    Some(wait.mul_f64(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_stop() {
        let schedule: Vec<Duration> = DEFAULT_RETRY_SCHEDULE
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
        assert_eq!(retry_after(1, &schedule, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(2, &schedule, 0.0),
            Some(Duration::from_secs(240))
        );
        assert_eq!(
            retry_after(2, &schedule, 1.0),
            Some(Duration::from_secs(360))
        );
        assert_eq!(retry_after(8, &schedule, 0.5), None);
        assert_eq!(retry_after(0, &schedule, 0.5), None);
        let total: u64 = DEFAULT_RETRY_SCHEDULE.iter().sum();
        assert!(
            (86_400..=100_000).contains(&total),
            "{total} s: about a day"
        );
    }

    #[test]
    fn event_types_read_as_standard_names() {
        assert_eq!(
            serde_json::to_string(&EventType::VideoExtremeAdded).unwrap(),
            "\"video.extreme_added\""
        );
        assert_eq!(
            "upload.expired".parse::<EventType>().unwrap(),
            EventType::UploadExpired
        );
    }
}
