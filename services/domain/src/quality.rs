//! What a tier's encodes aim at: the per-title search picks each rendition's rate factor to
//! reach this quality with as few bits as it takes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A quality target, measured on the luma plane against the source scaled to the rendition's
/// size. Written `fast`, `psnr:DB`, `ssim:VALUE` or `vmaf:SCORE` in settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", content = "value", rename_all = "snake_case")]
pub enum QualityTarget {
    /// The quality the fast tier reaches on the same frames: what viewers already accepted,
    /// delivered with fewer bits.
    FastTier,
    /// Mean PSNR, dB.
    Psnr(f64),
    /// Mean SSIM, 0..1.
    Ssim(f64),
    /// Mean VMAF (model `vmaf_v0.6.1`), 0..100; needs the `vmaf` tool on the workers.
    Vmaf(f64),
}

impl FromStr for QualityTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?}: expected fast, psnr:DB (20-60), ssim:VALUE (0.5-0.9999) or vmaf:SCORE (20-99)"
            )
        };
        match s.split_once(':') {
            None if s == "fast" => Ok(Self::FastTier),
            Some(("psnr", v)) => v
                .parse::<f64>()
                .ok()
                .filter(|v| (20.0..=60.0).contains(v))
                .map(Self::Psnr)
                .ok_or_else(bad),
            Some(("ssim", v)) => v
                .parse::<f64>()
                .ok()
                .filter(|v| (0.5..=0.9999).contains(v))
                .map(Self::Ssim)
                .ok_or_else(bad),
            Some(("vmaf", v)) => v
                .parse::<f64>()
                .ok()
                .filter(|v| (20.0..=99.0).contains(v))
                .map(Self::Vmaf)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for QualityTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FastTier => f.write_str("fast"),
            Self::Psnr(v) => write!(f, "psnr:{v}"),
            Self::Ssim(v) => write!(f, "ssim:{v}"),
            Self::Vmaf(v) => write!(f, "vmaf:{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_and_write_as_settings() {
        for s in ["fast", "psnr:40", "ssim:0.95", "vmaf:93"] {
            assert_eq!(s.parse::<QualityTarget>().unwrap().to_string(), s);
        }
        for s in [
            "", "psnr", "psnr:", "psnr:400", "ssim:1.5", "vmaf:100", "fast:1",
        ] {
            assert!(s.parse::<QualityTarget>().is_err(), "{s}");
        }
    }
}
