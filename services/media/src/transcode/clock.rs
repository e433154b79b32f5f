//! Frame timing on the encoder's clock: where each decoded frame lands, and its duration.

use ffmpeg_next::{Rational, Rescale};

use crate::conceal::DamageCount;

use super::*;

/// Decides which frames are kept and what time each gets.
pub(super) struct Clock {
    pub(super) window: Option<(i64, i64)>,
    /// Input time that becomes output time 0.
    pub(super) base: Option<i64>,
    pub(super) in_tb: Rational,
    pub(super) enc_tb: Rational,
    /// The window's start on the whole video's timeline, in `enc_tb`.
    pub(super) offset: i64,
    pub(super) gop_ticks: i64,
    pub(super) last_gop: Option<i64>,
    pub(super) encoded: u64,
    pub(super) progress: Option<FrameProgress>,
    /// Concealed frames among those kept.
    pub(super) damage: DamageCount,
    /// One frame at the nominal rate, in seconds.
    pub(super) frame_seconds: f64,
}

impl Clock {
    /// Output pts for a frame at input time `pts` and whether it must be a keyframe, or `None`
    /// when it falls outside the window. Keyframes: the first frame, and the first frame in each
    /// GOP-long interval of the whole video's timeline.
    pub(super) fn place(&mut self, pts: i64) -> Option<(i64, bool)> {
        if let Some((start, end)) = self.window
            && (pts < start || pts >= end)
        {
            return None;
        }
        let base = *self.base.get_or_insert(pts);
        let out = (pts - base).rescale(self.in_tb, self.enc_tb);
        let gop = (out + self.offset).div_euclid(self.gop_ticks);
        let key = self.last_gop != Some(gop);
        self.last_gop = Some(gop);
        Some((out, key))
    }

    pub(super) fn tick(&mut self) {
        self.encoded += 1;
        if let Some(p) = &self.progress {
            p(self.encoded);
        }
    }
}
