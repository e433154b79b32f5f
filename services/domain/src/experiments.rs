//! A/B experiments on encoder profiles and delivery rules: arms, deterministic assignment, and
//! the statistics a report gives per arm (with 95% intervals).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::QualityTarget;

/// What is assigned to an arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Unit {
    /// Each new video, when its job is planned: the arm's encoder profile encodes it.
    Video,
    /// Each viewer: the arm's delivery rule applies to what the player picks.
    Viewer,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Video => "video",
            Unit::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "video" => Some(Unit::Video),
            "viewer" => Some(Unit::Viewer),
            _ => None,
        }
    }
}

/// One arm: a name, a share of the units, and what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Arm {
    pub name: String,
    /// Relative share of the units (1-1000).
    pub weight: u32,
    /// Encoder profile (video experiments): the high and extreme tiers' quality target,
    /// `fast`, `psnr:DB`, `ssim:VALUE` or `off` (fixed rate factors). Absent: the deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_target: Option<String>,
    /// Encoder profile (video experiments): x264's and x265's psychovisual rate-distortion in
    /// the high and extreme tiers (detail that looks sharper, paid in bits and in PSNR/SSIM).
    /// Absent: the deployment's `VTX_PSYCHOVISUAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psychovisual: Option<bool>,
    /// Delivery rule (viewer experiments): the player picks no rendition taller than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
}

impl Arm {
    /// What this arm changes in the high and extreme tiers' encodes.
    pub fn encoder_profile(&self) -> EncoderProfile {
        EncoderProfile {
            target: self
                .quality_target
                .as_deref()
                .and_then(|t| ProfileTarget::parse(t).ok()),
            psychovisual: self.psychovisual,
        }
    }
}

/// An encoder profile: what the high and extreme tiers aim at, and how. `None` fields leave the
/// workers' settings (`VTX_QUALITY_TARGET`, `VTX_PSYCHOVISUAL`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EncoderProfile {
    pub target: Option<ProfileTarget>,
    pub psychovisual: Option<bool>,
}

/// What an arm's encoder profile asks of the high and extreme tiers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ProfileTarget {
    /// Fixed rate factors (quality first).
    Off,
    Target(QualityTarget),
}

impl ProfileTarget {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "off" {
            Ok(Self::Off)
        } else {
            s.parse().map(Self::Target)
        }
    }

    pub fn target(self) -> Option<QualityTarget> {
        match self {
            Self::Off => None,
            Self::Target(t) => Some(t),
        }
    }
}

/// Limits on what a client may declare.
pub const MAX_ARMS: usize = 8;
pub const MAX_NAME_LEN: usize = 64;

/// Checks an experiment's arms; the reason when they do not hold.
pub fn check_arms(unit: Unit, arms: &[Arm]) -> Result<(), String> {
    if !(2..=MAX_ARMS).contains(&arms.len()) {
        return Err(format!("an experiment has 2 to {MAX_ARMS} arms"));
    }
    for (i, a) in arms.iter().enumerate() {
        if a.name.is_empty()
            || a.name.len() > MAX_NAME_LEN
            || !a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "arm names are 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-]"
            ));
        }
        if arms[..i].iter().any(|b| b.name == a.name) {
            return Err(format!("arm {:?} is named twice", a.name));
        }
        if !(1..=1000).contains(&a.weight) {
            return Err("arm weights are 1-1000".into());
        }
        if let Some(t) = &a.quality_target {
            ProfileTarget::parse(t)?;
        }
        if a.max_height.is_some_and(|h| !(2..=8192).contains(&h)) {
            return Err("max_height is 2-8192".into());
        }
        match unit {
            Unit::Video if a.max_height.is_some() => {
                return Err(
                    "a video experiment compares encoder profiles (quality_target, psychovisual)"
                        .into(),
                );
            }
            Unit::Viewer if a.quality_target.is_some() || a.psychovisual.is_some() => {
                return Err("a viewer experiment compares delivery rules (max_height)".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// The arm `unit_key` (a video id, or a viewer's id) belongs to in `experiment`: the same answer
/// every time, in every process, with each arm's share of units in proportion to its weight.
pub fn assign(experiment: Uuid, unit_key: &str, arms: &[Arm]) -> usize {
    let total: u64 = arms.iter().map(|a| u64::from(a.weight)).sum();
    if total == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a, then a 64-bit finaliser for even buckets
    for b in experiment.as_bytes().iter().chain(unit_key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let mut point = h % total;
    for (i, a) in arms.iter().enumerate() {
        if point < u64::from(a.weight) {
            return i;
        }
        point -= u64::from(a.weight);
    }
    arms.len() - 1
}

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A share with its 95% Wilson score interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rate {
    pub count: u64,
    pub of: u64,
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

pub fn wilson(count: u64, of: u64) -> Rate {
    if of == 0 {
        return Rate {
            count,
            of,
            value: None,
            low: None,
            high: None,
        };
    }
    let (n, p, z) = (of as f64, count as f64 / of as f64, Z95);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Rate {
        count,
        of,
        value: Some(p),
        low: Some((centre - half).max(0.0)),
        high: Some((centre + half).min(1.0)),
    }
}

/// A mean with its 95% interval (normal approximation; the sample standard deviation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mean {
    pub n: u64,
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

pub fn mean(n: u64, sum: f64, sum_squares: f64) -> Mean {
    if n == 0 {
        return Mean {
            n,
            value: None,
            low: None,
            high: None,
        };
    }
    let nf = n as f64;
    let m = sum / nf;
    let half = if n > 1 {
        let var = ((sum_squares - nf * m * m) / (nf - 1.0)).max(0.0);
        Z95 * (var / nf).sqrt()
    } else {
        f64::INFINITY
    };
    Mean {
        n,
        value: Some(m),
        low: Some(m - half),
        high: Some(m + half),
    }
}

/// The 1-based ranks, in the `n` sorted values, of a 95% interval for the `p` quantile
/// (distribution-free: round(np - z sqrt(np(1-p))) and round(np + 1 + z sqrt(np(1-p))), from the
/// binomial's normal approximation), and of the quantile itself (nearest rank). A bound beyond
/// the sample (too few values for a 95% interval there) is `None`.
pub fn quantile_ranks(n: u64, p: f64) -> Option<(Option<u64>, u64, Option<u64>)> {
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let spread = Z95 * (nf * p * (1.0 - p)).sqrt();
    let low = (nf * p - spread).round();
    let high = (nf * p + 1.0 + spread).round();
    Some((
        (low >= 1.0).then_some(low as u64),
        ((nf * p).ceil() as u64).clamp(1, n),
        (high <= nf).then_some(high as u64),
    ))
}

/// A quantile with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quantile {
    pub n: u64,
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Plays every arm needs before a winner is picked for the caller.
pub const MIN_PLAYS_TO_PICK: u64 = 30;

/// The arm a stopped experiment keeps when none is named: the one that delivers the fewest
/// bytes per play among those not significantly worse than the best arm on failure rate and
/// effective-play rate (95% intervals that do not overlap).
pub fn pick_winner(arms: &[(String, Mean, Rate, Rate)]) -> Option<String> {
    // Too few plays in any arm and every interval is too wide to rule anything out.
    if arms.iter().any(|a| a.1.n < MIN_PLAYS_TO_PICK) {
        return None;
    }
    let best_failure = arms
        .iter()
        .filter_map(|a| a.2.high)
        .fold(f64::INFINITY, f64::min);
    let best_effective = arms
        .iter()
        .filter_map(|a| a.3.low)
        .fold(f64::NEG_INFINITY, f64::max);
    arms.iter()
        .filter(|a| a.2.low.is_none_or(|l| l <= best_failure))
        .filter(|a| a.3.high.is_none_or(|h| h >= best_effective))
        .filter_map(|a| a.1.value.map(|v| (v, &a.0)))
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .map(|(_, name)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(name: &str, weight: u32) -> Arm {
        Arm {
            name: name.into(),
            weight,
            quality_target: None,
            psychovisual: None,
            max_height: None,
        }
    }

    #[test]
    fn assignment_is_stable_and_follows_the_weights() {
        let e = Uuid::from_u128(7);
        let arms = [arm("a", 1), arm("b", 3)];
        let mut counts = [0u32; 2];
        for i in 0..8000 {
            let key = format!("viewer-{i}");
            let k = assign(e, &key, &arms);
            assert_eq!(k, assign(e, &key, &arms));
            counts[k] += 1;
        }
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
        // Another experiment shuffles the units anew.
        let other = (0..100)
            .filter(|i| {
                let key = format!("viewer-{i}");
                assign(e, &key, &arms) != assign(Uuid::from_u128(8), &key, &arms)
            })
            .count();
        assert!(other > 10, "{other}");
    }

    #[test]
    fn intervals_are_the_textbook_ones() {
        // Wilson, 8 of 10: 0.4902 to 0.9433 (Newcombe 1998, table I style check).
        let r = wilson(8, 10);
        assert!((r.low.unwrap() - 0.4902).abs() < 1e-4, "{r:?}");
        assert!((r.high.unwrap() - 0.9433).abs() < 1e-4, "{r:?}");
        assert_eq!(wilson(0, 0).value, None);
        // Mean of 1..=5: 3, sd 1.5811, half-width 1.96 * 1.5811 / sqrt 5 = 1.3859.
        let m = mean(5, 15.0, 55.0);
        assert!((m.low.unwrap() - (3.0 - 1.3859)).abs() < 1e-3, "{m:?}");
        // Median of 100: ranks 40 and 61 bound it; the median is rank 50.
        assert_eq!(quantile_ranks(100, 0.5), Some((Some(40), 50, Some(61))));
        // p95 of 100: rank 95, interval 91 to 100.
        assert_eq!(quantile_ranks(100, 0.95), Some((Some(91), 95, Some(100))));
        assert_eq!(quantile_ranks(1, 0.95), Some((Some(1), 1, None)));
    }

    #[test]
    fn arms_are_checked() {
        assert!(check_arms(Unit::Video, &[arm("a", 1)]).is_err());
        assert!(check_arms(Unit::Video, &[arm("a", 1), arm("a", 1)]).is_err());
        assert!(check_arms(Unit::Video, &[arm("a", 1), arm("b c", 1)]).is_err());
        let mut b = arm("b", 1);
        b.quality_target = Some("psnr:41".into());
        assert!(check_arms(Unit::Video, &[arm("a", 1), b.clone()]).is_ok());
        assert!(check_arms(Unit::Viewer, &[arm("a", 1), b]).is_err());
        let mut c = arm("c", 1);
        c.quality_target = Some("vmaf:100".into());
        assert!(check_arms(Unit::Video, &[arm("a", 1), c]).is_err());
        let mut d = arm("d", 1);
        d.psychovisual = Some(true);
        assert!(check_arms(Unit::Video, &[arm("a", 1), d.clone()]).is_ok());
        assert_eq!(
            d.encoder_profile(),
            EncoderProfile {
                target: None,
                psychovisual: Some(true)
            }
        );
        assert!(check_arms(Unit::Viewer, &[arm("a", 1), d]).is_err());
    }
}

/// `POST /v1/experiments`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewExperiment {
    /// 1-64 characters.
    pub name: String,
    pub unit: Unit,
    /// 2-8 arms.
    pub arms: Vec<Arm>,
    /// A play counts as effective when it lasts at least this long (1-60 s; default 3).
    #[serde(default)]
    pub effective_play_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentView {
    pub id: String,
    pub name: String,
    pub unit: Unit,
    pub arms: Vec<Arm>,
    pub effective_play_seconds: f64,
    /// `running` or `stopped`.
    pub state: String,
    /// The arm kept when stopped: its encoder profile becomes the default for new videos.
    pub winner: Option<String>,
    pub created_at: String,
    pub stopped_at: Option<String>,
}

/// One arm's numbers; intervals are 95%.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArmReport {
    pub name: String,
    /// Videos encoded as this arm (video experiments).
    pub videos: u64,
    pub plays: u64,
    pub bytes_per_play: Mean,
    pub first_frame_ms_p50: Quantile,
    pub first_frame_ms_p95: Quantile,
    pub failure_rate: Rate,
    /// Plays that did not fail and lasted at least `effective_play_seconds`, over all plays.
    pub effective_play_rate: Rate,
    pub stalls_per_play: Option<f64>,
    /// Mean PSNR and SSIM of the arm's videos' measured renditions.
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentReport {
    pub experiment: ExperimentView,
    pub arms: Vec<ArmReport>,
}

/// `POST /v1/experiments/{id}/stop`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StopExperiment {
    /// The arm to keep; absent: the one with the fewest bytes per play among those not
    /// significantly worse on failures and effective plays.
    #[serde(default)]
    pub winner: Option<String>,
}

/// Which arm a video or viewer is in, and what that arm changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub experiment_id: String,
    pub arm: String,
    pub quality_target: Option<String>,
    pub psychovisual: Option<bool>,
    pub max_height: Option<u32>,
}

/// `POST /v1/playback-reports`: what players saw of plays.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybackReports {
    pub reports: Vec<PlaybackReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybackReport {
    pub video_id: String,
    /// The player's own id for this play (1-128 bytes): a report sent again with the same id
    /// (a retry) counts once. Absent: every report counts.
    #[serde(default)]
    pub play_id: Option<String>,
    /// Counts the play in a running viewer experiment (at most 128 bytes).
    #[serde(default)]
    pub viewer_id: Option<String>,
    /// From the play request to the first frame shown (at most 600000); absent when no frame was.
    #[serde(default)]
    pub first_frame_ms: Option<u32>,
    /// Rebuffering events (at most 100000).
    #[serde(default)]
    pub stalls: u32,
    /// The play ended in an error.
    #[serde(default)]
    pub failed: bool,
    /// 0-86400.
    pub watched_seconds: f64,
    /// Media bytes the player downloaded for this play (at most 10^12).
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybackAccepted {
    pub accepted: u64,
    /// Reports counted towards a running experiment's arm (a report may count in both a video
    /// and a viewer experiment; one whose `play_id` was counted before does not count again).
    pub counted: u64,
}
