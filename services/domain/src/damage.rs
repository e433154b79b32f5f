//! Damaged sources: how much damage is concealed before a source is refused, and what was.

use serde::{Deserialize, Serialize};

/// Frames of a damaged source that were concealed: video frames (the frame before shown again
/// in their place) and audio frames (silence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Concealed {
    pub video_frames: u64,
    pub audio_frames: u64,
}

/// How much damage a source may hold before it fails as `corrupt-stream`
/// (`VTX_DAMAGE_MAX_SHARE`, `VTX_DAMAGE_MAX_RUN_SECS`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DamagePolicy {
    /// Largest share of concealed frames (of the video's frames, and of the audio's).
    pub max_share: f64,
    /// Longest run of concealed frames, in seconds of the source.
    pub max_run_seconds: f64,
}

impl Default for DamagePolicy {
    fn default() -> Self {
        Self {
            max_share: 0.01,
            max_run_seconds: 1.0,
        }
    }
}

impl DamagePolicy {
    /// Why `concealed` of `total` `what` frames are too many, if they are.
    pub fn check_share(&self, what: &str, concealed: u64, total: u64) -> Result<(), String> {
        if concealed > 0 && concealed as f64 > self.max_share * total.max(1) as f64 {
            return Err(format!(
                "{concealed} of {total} {what} frames could not be decoded (over {}%)",
                self.max_share * 100.0
            ));
        }
        Ok(())
    }

    /// Why a run of `frames` concealed `what` frames over `seconds` is too long, if it is.
    pub fn check_run(&self, what: &str, frames: u64, seconds: f64) -> Result<(), String> {
        if seconds > self.max_run_seconds + 1e-9 {
            return Err(format!(
                "{frames} {what} frames in a row ({seconds:.2} s) could not be decoded \
                 (over {} s)",
                self.max_run_seconds
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lost_frame_in_a_hundred_passes_two_do_not() {
        let p = DamagePolicy::default();
        assert!(p.check_share("video", 0, 0).is_ok());
        assert!(p.check_share("video", 1, 100).is_ok());
        let e = p.check_share("video", 2, 100).unwrap_err();
        assert!(e.contains("2 of 100 video frames"), "{e}");
        assert!(p.check_run("audio", 40, 0.99).is_ok());
        assert!(p.check_run("audio", 60, 1.4).is_err());
    }
}
