//! What the scheduler decides about a job, stored with it so any worker can run any stage:
//! the source's timing facts and its slice windows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SliceWindow;

/// Encode tier: how much effort goes into each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The upload itself, remuxed without re-encoding (a standard input: H.264 with closed
    /// GOPs, AAC, within the configured caps): live the moment the upload completes, until the
    /// fast tier replaces it.
    Instant,
    /// Low complexity, to publish quickly.
    Fast,
    /// High complexity; silently replaces the fast tier once verified.
    High,
    /// HEVC and AV1 for hot videos.
    Extreme,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Instant, Tier::Fast, Tier::High, Tier::Extreme];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Instant => "instant",
            Tier::Fast => "fast",
            Tier::High => "high",
            Tier::Extreme => "extreme",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier {s:?} (instant, fast, high, extreme)"))
    }
}

crate::text::text_column!(Tier);

crate::text::text_enum!(
    /// How a rendition is packaged (`renditions.container`).
    Container {
    Mp4 => "mp4",
    Hls => "hls",
});

/// The plan of a job: enough for a worker to encode any slice and to merge any tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPlan {
    /// Time base of the source's video timestamps (and of every window below).
    pub time_base: (i32, i32),
    pub frame_rate: (i32, i32),
    /// Clockwise degrees to rotate.
    pub rotation: u32,
    pub display_width: u32,
    pub display_height: u32,
    /// First shown frame: output time 0.
    pub shown_start: i64,
    pub end: i64,
    pub frames: u64,
    pub duration_seconds: f64,
    pub has_audio: bool,
    /// How long the source's audio starts before its first shown frame (plan time base; 0 when
    /// it starts with or after it). Outputs keep that lead: their video starts this late.
    #[serde(default)]
    pub audio_lead: i64,
    pub slices: Vec<SliceWindow>,
    /// What the source's bitrate allows its ladder (every tier's rungs come from it). Plans made
    /// before it was recorded have no cap from the source.
    #[serde(default)]
    pub ladder: crate::LadderLimits,
    /// The encoder profile an experiment's arm (or a stopped experiment's winner) gave this
    /// video: what the high and extreme tiers' per-title search aims at. `None`: the workers'
    /// `VTX_QUALITY_TARGET`.
    #[serde(default)]
    pub profile: Option<crate::experiments::ProfileTarget>,
    /// The same profile's psychovisual setting. `None`: the workers' `VTX_PSYCHOVISUAL`.
    #[serde(default)]
    pub psychovisual: Option<bool>,
}

impl JobPlan {
    /// Where a slice starts on the output timeline (plan time base).
    pub fn offset_of(&self, w: &SliceWindow) -> i64 {
        w.start.max(self.shown_start) - self.shown_start
    }

    /// The frames a slice file (whose times start at its keyframe) contributes: `[start, end)`
    /// relative to the slice's own start, so frames hidden before `shown_start` stay hidden.
    pub fn window_in_slice(&self, w: &SliceWindow) -> (i64, i64) {
        (self.shown_start.max(w.start) - w.start, w.end - w.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_pre_roll_is_outside_the_first_window_only() {
        let plan = JobPlan {
            time_base: (1, 1000),
            frame_rate: (25, 1),
            rotation: 0,
            display_width: 640,
            display_height: 360,
            shown_start: 300,
            end: 10_000,
            frames: 243,
            duration_seconds: 9.7,
            has_audio: true,
            audio_lead: 0,
            ladder: Default::default(),
            profile: None,
            psychovisual: None,
            slices: vec![
                SliceWindow {
                    index: 0,
                    start: 0,
                    end: 4000,
                },
                SliceWindow {
                    index: 1,
                    start: 4000,
                    end: 10_000,
                },
            ],
        };
        assert_eq!(plan.window_in_slice(&plan.slices[0]), (300, 4000));
        assert_eq!(plan.window_in_slice(&plan.slices[1]), (0, 6000));
        assert_eq!(plan.offset_of(&plan.slices[0]), 0);
        assert_eq!(plan.offset_of(&plan.slices[1]), 3700);
        assert_eq!("high".parse::<Tier>().unwrap(), Tier::High);
    }
}

/// What every rendition must keep of its source before it goes live: the frame count exactly
/// (frames lost to damage are concealed, never dropped) and the duration within one frame, plus
/// a millisecond of rounding per piece it was joined from, at any frame rate (frames keep their
/// source times). The one frame check, for sliced tiers and live-ingest tiers alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceTiming {
    pub frames: u64,
    pub seconds: f64,
    /// One frame's duration at the source's nominal rate.
    pub frame_seconds: f64,
}

impl SourceTiming {
    /// `Err` says how rendition `name` (`frames` over `seconds`, joined from `pieces`) differs.
    pub fn check(
        &self,
        name: &str,
        frames: u64,
        seconds: f64,
        pieces: usize,
    ) -> Result<(), String> {
        let slack = self.frame_seconds + 1e-3 * pieces.max(1) as f64;
        if frames == self.frames && (seconds - self.seconds).abs() <= slack {
            Ok(())
        } else {
            Err(format!(
                "{name} has {frames} frames over {seconds:.3} s; the source has {} over {:.3} s",
                self.frames, self.seconds
            ))
        }
    }
}

#[cfg(test)]
mod timing_tests {
    use super::SourceTiming;

    #[test]
    fn a_rendition_keeps_every_frame_and_its_duration_within_a_frame() {
        let src = SourceTiming {
            frames: 300,
            seconds: 10.01,
            frame_seconds: 1001.0 / 30000.0,
        };
        assert!(src.check("720p", 300, 10.01, 1).is_ok());
        assert!(src.check("720p", 300, 10.01 + 0.034, 1).is_ok());
        assert!(src.check("720p", 300, 10.01 + 0.04, 1).is_err());
        assert!(src.check("720p", 300, 10.01 + 0.04, 10).is_ok());
        assert!(src.check("720p", 299, 10.01, 1).is_err());
    }
}
