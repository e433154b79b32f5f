//! The rendition ladder: which output sizes a source gets.
//!
//! Rungs are named by their short side ("720p" is 1280x720 landscape or 720x1280 portrait), so
//! phone videos shot upright get the same ladder as landscape ones. A source never gets a rung
//! above its own size; a source whose size falls between rungs also gets a rung at its own size,
//! so nothing is lost by downscaling alone.

use serde::{Deserialize, Serialize};

/// One output of the ladder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    /// Name used in object keys and playback info, e.g. "360p".
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak video bitrate for this rung, bits per second.
    pub max_bitrate: u32,
    /// The peak is the source's bitrate (below the rung's standard peak): the encoders then
    /// hold the average to it too (a buffer of one second at the peak, started half full), so
    /// that even a short rendition is not larger than its source.
    #[serde(default)]
    pub capped_by_source: bool,
}

/// Standard short-side sizes and their peak bitrates (H.264).
pub const STANDARD_RUNGS: [(u32, u32); 5] = [
    (240, 400_000),
    (360, 800_000),
    (480, 1_400_000),
    (720, 2_800_000),
    (1080, 5_000_000),
];

/// What a source's own bitrate allows its ladder: no rendition may peak above `factor` times
/// the source's video bitrate (a rung's own peak still caps it when the source is above it),
/// and a rung whose peak would then be at least `min_ratio` of the next rung's is dropped (it
/// would cost nearly as many bits as the larger picture). The largest rung is always kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LadderLimits {
    /// The source's video bits per second; `None`: no cap from the source.
    pub source_bitrate: Option<u64>,
    pub factor: f64,
    /// 0 never drops a rung.
    pub min_ratio: f64,
}

impl Default for LadderLimits {
    /// No cap from the source (plans made before the source's bitrate was recorded).
    fn default() -> Self {
        Self {
            source_bitrate: None,
            factor: DEFAULT_BITRATE_FACTOR,
            min_ratio: 0.0,
        }
    }
}

/// `VTX_MAX_BITRATE_FACTOR`'s default: no rendition above the source's bitrate.
pub const DEFAULT_BITRATE_FACTOR: f64 = 1.0;
/// `VTX_RUNG_MIN_RATIO`'s default: a rung within 15% of the next one's peak is dropped.
pub const DEFAULT_RUNG_MIN_RATIO: f64 = 0.85;

impl LadderLimits {
    /// Caps from a source of `bitrate` bits per second, with the default factor and ratio.
    pub fn for_source(bitrate: u64) -> Self {
        Self {
            source_bitrate: (bitrate > 0).then_some(bitrate),
            factor: DEFAULT_BITRATE_FACTOR,
            min_ratio: DEFAULT_RUNG_MIN_RATIO,
        }
    }
}

/// The ladder for a source of `width` x `height` under `limits` (see `LadderLimits`).
pub fn plan_ladder_within(width: u32, height: u32, limits: &LadderLimits) -> Vec<Rung> {
    let mut rungs = plan_ladder(width, height);
    if let Some(source) = limits.source_bitrate {
        let cap = (source as f64 * limits.factor).max(1.0);
        for r in &mut rungs {
            if cap < f64::from(r.max_bitrate) {
                r.max_bitrate = cap as u32;
                r.capped_by_source = true;
            }
        }
    }
    if limits.min_ratio > 0.0 {
        // From the top down: a rung is compared with the next one kept above it.
        let mut kept: Vec<Rung> = Vec::with_capacity(rungs.len());
        for r in rungs.into_iter().rev() {
            let close = kept.last().is_some_and(|above: &Rung| {
                f64::from(r.max_bitrate) >= limits.min_ratio * f64::from(above.max_bitrate)
            });
            if !close {
                kept.push(r);
            }
        }
        kept.reverse();
        rungs = kept;
    }
    rungs
}

/// Plans the ladder for a source of `width` x `height` (display size, rotation applied).
/// Returns rungs from smallest to largest; never empty for a non-empty source.
pub fn plan_ladder(width: u32, height: u32) -> Vec<Rung> {
    if width == 0 || height == 0 {
        return Vec::new();
    }
    let short = width.min(height);
    let top = STANDARD_RUNGS[STANDARD_RUNGS.len() - 1].0;
    let mut rungs: Vec<Rung> = STANDARD_RUNGS
        .iter()
        .filter(|(s, _)| *s <= short)
        .map(|&(s, rate)| rung_for(width, height, s, rate))
        .collect();
    let largest = rungs.last().map(|r| r.width.min(r.height)).unwrap_or(0);
    if short < top && even_down(short) > largest {
        // Between standard sizes (or below the smallest): keep a rung at the source's own size.
        let rate = STANDARD_RUNGS
            .iter()
            .find(|(s, _)| *s >= short)
            .map(|&(s, rate)| (u64::from(rate) * u64::from(short) / u64::from(s)) as u32)
            .unwrap_or(STANDARD_RUNGS[0].1);
        rungs.push(rung_for(width, height, even_down(short), rate));
    }
    rungs
}

fn rung_for(width: u32, height: u32, short_target: u32, max_bitrate: u32) -> Rung {
    let (short, long) = (width.min(height), width.max(height));
    let long_target = even_round(u64::from(long) * u64::from(short_target), u64::from(short));
    let short_target = even_down(short_target);
    let (w, h) = if width >= height {
        (long_target, short_target)
    } else {
        (short_target, long_target)
    };
    Rung {
        name: format!("{short_target}p"),
        width: w,
        height: h,
        max_bitrate,
        capped_by_source: false,
    }
}

fn even_down(v: u32) -> u32 {
    (v & !1).max(2)
}

/// `num / den` rounded to the nearest even integer, at least 2.
fn even_round(num: u64, den: u64) -> u32 {
    let halves = (num + den) / (2 * den); // round(num / den / 2)
    (halves * 2).max(2) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(w: u32, h: u32) -> Vec<(String, u32, u32)> {
        plan_ladder(w, h)
            .into_iter()
            .map(|r| (r.name, r.width, r.height))
            .collect()
    }

    #[test]
    fn landscape_720p_gets_four_rungs_up_to_its_size() {
        assert_eq!(
            sizes(1280, 720),
            vec![
                ("240p".into(), 426, 240),
                ("360p".into(), 640, 360),
                ("480p".into(), 854, 480),
                ("720p".into(), 1280, 720),
            ]
        );
    }

    #[test]
    fn portrait_uses_the_short_side() {
        let l = sizes(1080, 1920);
        assert_eq!(l.last().unwrap(), &("1080p".to_string(), 1080, 1920));
        assert_eq!(l[0], ("240p".to_string(), 240, 426));
    }

    #[test]
    fn between_rungs_keeps_the_source_size() {
        assert_eq!(
            sizes(640, 272),
            vec![("240p".into(), 564, 240), ("272p".into(), 640, 272)]
        );
    }

    #[test]
    fn tiny_source_gets_one_rung_at_its_own_size() {
        assert_eq!(sizes(176, 144), vec![("144p".into(), 176, 144)]);
    }

    #[test]
    fn a_low_bitrate_source_caps_every_rung_and_loses_the_rungs_it_makes_pointless() {
        // 720p at 1 Mb/s: 480p (1.4 Mb/s peak) and 720p (2.8) are both capped at 1 Mb/s, so
        // 480p would cost as much as 720p and is dropped; 360p (0.8) and 240p (0.4) stay.
        let ladder = plan_ladder_within(1280, 720, &LadderLimits::for_source(1_000_000));
        let got: Vec<(String, u32)> = ladder
            .into_iter()
            .map(|r| (r.name, r.max_bitrate))
            .collect();
        assert_eq!(
            got,
            vec![
                ("240p".into(), 400_000),
                ("360p".into(), 800_000),
                ("720p".into(), 1_000_000),
            ]
        );
        // A source above every peak keeps the standard ladder; no limits, no change.
        let rich = plan_ladder_within(1280, 720, &LadderLimits::for_source(20_000_000));
        assert_eq!(rich, plan_ladder(1280, 720));
        assert_eq!(
            plan_ladder_within(1280, 720, &LadderLimits::default()),
            plan_ladder(1280, 720)
        );
        // A factor above 1 lets renditions go that far above the source.
        let loose = LadderLimits {
            factor: 2.0,
            ..LadderLimits::for_source(1_000_000)
        };
        let top = plan_ladder_within(1280, 720, &loose).pop().unwrap();
        assert_eq!(top.max_bitrate, 2_000_000);
    }

    #[test]
    fn never_above_1080_and_dimensions_are_even() {
        for (w, h) in [(3840, 2160), (1919, 1081), (333, 777), (2, 2), (1, 1)] {
            let ladder = plan_ladder(w, h);
            assert!(!ladder.is_empty());
            for r in ladder {
                assert!(r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
                assert!(r.width.min(r.height) <= 1080, "{r:?}");
                assert!(r.width.min(r.height) <= w.min(h).max(2), "{r:?}");
            }
        }
    }
}
