//! Hotness: which videos earn an extreme (HEVC/AV1) encode. Plays are counted per minute; every
//! period the tracker takes the top `x` videos by plays over the window `t`. When the cluster is
//! busy, `t` and `x` shrink so that hot-video work never starves new uploads.
//!
//! The load rule: `load` is the work waiting on the fast and high queues per consumer
//! (`ready / consumers`, with workers busy counted as one ready task each). At or below
//! `idle_load` the tracker uses the widest window and the largest `x`; at or above `busy_load`
//! the narrowest and smallest; in between both move linearly. With no consumer at all the
//! cluster counts as busy.

/// The bounds `t` and `x` move between, and the loads that map to them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HotBounds {
    pub window_min_secs: u64,
    pub window_max_secs: u64,
    pub top_min: u32,
    pub top_max: u32,
    pub idle_load: f64,
    pub busy_load: f64,
}

impl Default for HotBounds {
    fn default() -> Self {
        Self {
            window_min_secs: 3600,
            window_max_secs: 24 * 3600,
            top_min: 100,
            top_max: 2000,
            idle_load: 1.0,
            busy_load: 10.0,
        }
    }
}

/// Work waiting per consumer on the fast and high queues.
pub fn cluster_load(ready: u64, in_flight: u64, consumers: u64) -> f64 {
    if consumers == 0 {
        return f64::INFINITY;
    }
    (ready + in_flight) as f64 / consumers as f64
}

/// The window (seconds) and top-x for a measured load.
pub fn adapt(load: f64, b: &HotBounds) -> (u64, u32) {
    let span = (b.busy_load - b.idle_load).max(f64::EPSILON);
    let busy = if load.is_nan() {
        1.0
    } else {
        ((load - b.idle_load) / span).clamp(0.0, 1.0)
    };
    let lerp = |max: f64, min: f64| max - (max - min) * busy;
    let window = lerp(b.window_max_secs as f64, b.window_min_secs as f64).round() as u64;
    let top = lerp(f64::from(b.top_max), f64::from(b.top_min)).round() as u32;
    (
        window.clamp(b.window_min_secs, b.window_max_secs.max(b.window_min_secs)),
        top.clamp(b.top_min, b.top_max.max(b.top_min)),
    )
}

/// Whether an extreme rendition earns its place beside the high tier's rendition of the same
/// rung: quality within `tolerance_db` of it (PSNR against the source) and SSIM no worse than
/// `ssim_tolerance` below it, at a bitrate lower by at least `min_saving` (a fraction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcceptRule {
    pub psnr_tolerance_db: f64,
    pub ssim_tolerance: f64,
    pub min_saving: f64,
}

impl Default for AcceptRule {
    fn default() -> Self {
        Self {
            psnr_tolerance_db: 0.5,
            ssim_tolerance: 0.005,
            min_saving: 0.1,
        }
    }
}

/// One rendition's measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub bitrate: u64,
    pub psnr: f64,
    pub ssim: f64,
}

impl AcceptRule {
    /// The saving (fraction of the high tier's bitrate) when the extreme rendition is accepted.
    pub fn judge(&self, high: Measured, extreme: Measured) -> Result<f64, String> {
        if high.bitrate == 0 {
            return Err("the high tier has no bitrate".into());
        }
        let saving = 1.0 - extreme.bitrate as f64 / high.bitrate as f64;
        if extreme.psnr + self.psnr_tolerance_db < high.psnr {
            return Err(format!(
                "PSNR {:.2} dB is more than {} dB below the high tier's {:.2} dB",
                extreme.psnr, self.psnr_tolerance_db, high.psnr
            ));
        }
        if extreme.ssim + self.ssim_tolerance < high.ssim {
            return Err(format!(
                "SSIM {:.4} is more than {} below the high tier's {:.4}",
                extreme.ssim, self.ssim_tolerance, high.ssim
            ));
        }
        if saving < self.min_saving {
            return Err(format!(
                "saves {:.1}% of the bitrate, less than {:.1}%",
                saving * 100.0,
                self.min_saving * 100.0
            ));
        }
        Ok(saving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_top_shrink_as_the_cluster_gets_busy() {
        let b = HotBounds {
            window_min_secs: 3600,
            window_max_secs: 7200,
            top_min: 10,
            top_max: 110,
            idle_load: 1.0,
            busy_load: 11.0,
        };
        assert_eq!(adapt(0.0, &b), (7200, 110));
        assert_eq!(adapt(1.0, &b), (7200, 110));
        assert_eq!(adapt(6.0, &b), (5400, 60));
        assert_eq!(adapt(11.0, &b), (3600, 10));
        assert_eq!(adapt(1e9, &b), (3600, 10));
        assert_eq!(
            adapt(cluster_load(5, 0, 0), &b),
            (3600, 10),
            "no consumer: busy"
        );
        assert_eq!(cluster_load(8, 2, 2), 5.0);
    }

    #[test]
    fn an_extreme_rendition_must_be_smaller_at_equal_quality() {
        let rule = AcceptRule {
            psnr_tolerance_db: 0.5,
            ssim_tolerance: 0.005,
            min_saving: 0.2,
        };
        let high = Measured {
            bitrate: 1_000_000,
            psnr: 40.0,
            ssim: 0.98,
        };
        let ok = Measured {
            bitrate: 600_000,
            psnr: 39.8,
            ssim: 0.978,
        };
        assert!((rule.judge(high, ok).unwrap() - 0.4).abs() < 1e-9);
        let worse = Measured { psnr: 39.0, ..ok };
        assert!(rule.judge(high, worse).unwrap_err().contains("PSNR"));
        let blurry = Measured { ssim: 0.96, ..ok };
        assert!(rule.judge(high, blurry).unwrap_err().contains("SSIM"));
        let big = Measured {
            bitrate: 900_000,
            ..ok
        };
        assert!(rule.judge(high, big).unwrap_err().contains("saves 10.0%"));
    }
}
