//! Encoder profiles per tier and codec, and the RFC 6381 codec strings players need.

use ffmpeg_next::Dictionary;
use serde::{Deserialize, Serialize};

pub use vtx_domain::Tier;

/// Codecs a tier produces, one rendition set each.
pub fn tier_codecs(tier: Tier) -> &'static [VideoCodec] {
    match tier {
        Tier::Instant | Tier::Fast | Tier::High => &[VideoCodec::H264],
        Tier::Extreme => &[VideoCodec::Hevc, VideoCodec::Av1],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
}

impl VideoCodec {
    pub fn encoder_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "libx264",
            VideoCodec::Hevc => "libx265",
            VideoCodec::Av1 => "libsvtav1",
        }
    }

    /// The pixel format this codec encodes at `tier`. The extreme tier's HEVC and AV1 encode
    /// 10-bit (HEVC Main 10, AV1 Main at 10 bits) from 8-bit sources too: the finer internal
    /// precision saves bits at equal quality (measured in docs/benchmarks.md), and every
    /// decoder of those profiles takes it. H.264 stays 8-bit High profile, which every player
    /// decodes.
    pub fn pixel_format(self, tier: Tier) -> ffmpeg_next::format::Pixel {
        use ffmpeg_next::format::Pixel;
        match (self, tier) {
            (VideoCodec::Hevc | VideoCodec::Av1, Tier::Extreme) => Pixel::YUV420P10LE,
            _ => Pixel::YUV420P,
        }
    }

    /// The constant-quality value `tier` encodes at when no per-title search chose one.
    pub fn default_crf(self, tier: Tier) -> f32 {
        match (self, tier) {
            (VideoCodec::H264, Tier::Instant | Tier::Fast) => 23.0,
            (VideoCodec::H264, _) => 21.0,
            (VideoCodec::Hevc, _) => 24.0,
            (VideoCodec::Av1, _) => 32.0,
        }
    }

    /// The constant-quality values a per-title search may choose from.
    pub fn crf_range(self) -> (f32, f32) {
        match self {
            VideoCodec::H264 | VideoCodec::Hevc => (12.0, 38.0),
            VideoCodec::Av1 => (16.0, 55.0),
        }
    }

    /// Short name used in file names and manifests.
    pub fn label(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
            VideoCodec::Av1 => "av1",
        }
    }
}

/// Encoder options for `codec` at `tier`, capped at `max_bitrate`, with closed GOPs. Keyframes
/// are forced by the caller on a timeline grid shared by rungs and slices (forced frames become
/// IDR); the encoder's own interval is only a backstop at twice the GOP.
///
/// Without `psychovisual`, the high and extreme tiers switch off x264's psy-rd and x265's
/// psy-rd and psy-rdoq. Those spend bits on texture that looks sharp but is not the source's
/// (PSNR and SSIM count it as error). The fast tier's x264 veryfast has them in name only:
/// its sub-pixel refinement (subme 2) is below the rate-distortion modes psy-rd acts in, and
/// its output with `psy=0` is the same to 0.2% of the bytes. So off, the slower tiers aim at
/// the look viewers already accept from the fast tier, with fewer bits.
pub(crate) fn encoder_options(
    codec: VideoCodec,
    tier: Tier,
    rung: &vtx_domain::Rung,
    gop: u32,
    psychovisual: bool,
) -> Dictionary<'static> {
    let psy_off = !psychovisual && matches!(tier, Tier::High | Tier::Extreme);
    let mut o = Dictionary::new();
    let max_bitrate = rung.max_bitrate;
    let maxrate = max_bitrate.to_string();
    // Two seconds of buffer at the peak; one, started half full, where the peak is the source's
    // own rate, so that the average of a clip of a few seconds stays under it too.
    let (buffer_seconds, vbv_init) = if rung.capped_by_source {
        (1, ":vbv-init=0.5")
    } else {
        (2, "")
    };
    let bufsize = (u64::from(max_bitrate) * buffer_seconds).to_string();
    match codec {
        VideoCodec::H264 => {
            o.set(
                "preset",
                if tier == Tier::Fast {
                    "veryfast"
                } else {
                    "slow"
                },
            );
            o.set("profile", "high");
            o.set("crf", &codec.default_crf(tier).to_string());
            o.set("maxrate", &maxrate);
            o.set("bufsize", &bufsize);
            o.set(
                "x264-params",
                &format!(
                    "keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0{vbv_init}{}",
                    if psy_off { ":psy=0" } else { "" }
                ),
            );
        }
        VideoCodec::Hevc => {
            o.set(
                "preset",
                if tier == Tier::Extreme {
                    "slow"
                } else {
                    "medium"
                },
            );
            o.set("crf", &codec.default_crf(tier).to_string());
            o.set("forced-idr", "1");
            o.set(
                "x265-params",
                &format!(
                    "keyint={}:min-keyint={gop}:scenecut=0:open-gop=0:vbv-maxrate={}:vbv-bufsize={}:log-level=error{vbv_init}{}",
                    gop * 2,
                    max_bitrate / 1000,
                    u64::from(max_bitrate) * buffer_seconds / 1000,
                    if psy_off { ":psy-rd=0:psy-rdoq=0" } else { "" }
                ),
            );
        }
        VideoCodec::Av1 => {
            o.set("preset", if tier == Tier::Extreme { "4" } else { "8" });
            o.set("crf", &codec.default_crf(tier).to_string());
            // Capped CRF: the rung's peak rate, as x264's and x265's VBV caps give the others.
            o.set("svtav1-params", &format!("mbr={}", max_bitrate / 1000));
        }
    }
    o
}

/// RFC 6381 codec string of an encoded stream, from its extradata (`avcC`/`hvcC`/`av1C`).
pub fn codec_string(codec: VideoCodec, extradata: &[u8]) -> String {
    match codec {
        VideoCodec::H264 => match extradata {
            // avcC: version, profile, compatibility, level.
            [1, profile, compat, level, ..] => format!("avc1.{profile:02X}{compat:02X}{level:02X}"),
            _ => annexb_avc_string(extradata).unwrap_or_else(|| "avc1.640028".into()),
        },
        VideoCodec::Hevc => hvcc_string(extradata).unwrap_or_else(|| "hvc1.1.6.L93.B0".into()),
        VideoCodec::Av1 => av1c_string(extradata).unwrap_or_else(|| "av01.0.08M.08".into()),
    }
}

/// For Annex B extradata (start codes + SPS), read profile/compat/level from the SPS.
fn annexb_avc_string(data: &[u8]) -> Option<String> {
    let pos = data
        .windows(4)
        .position(|w| w == [0, 0, 1, 0x67] || (w[..3] == [0, 0, 1] && w[3] & 0x1f == 7))?;
    let sps = data.get(pos + 4..pos + 7)?;
    Some(format!("avc1.{:02X}{:02X}{:02X}", sps[0], sps[1], sps[2]))
}

/// `hvc1.<profile>.<compat reversed>.<tier><level>.<constraints>` from an `hvcC` record.
fn hvcc_string(d: &[u8]) -> Option<String> {
    if d.len() < 13 || d[0] != 1 {
        return None;
    }
    let profile_space = d[1] >> 6;
    let tier = (d[1] >> 5) & 1;
    let profile = d[1] & 0x1f;
    let compat = u32::from_be_bytes([d[2], d[3], d[4], d[5]]).reverse_bits();
    let constraints = &d[6..12];
    let level = d[12];
    let space = match profile_space {
        1 => "A",
        2 => "B",
        3 => "C",
        _ => "",
    };
    let mut s = format!(
        "hvc1.{space}{profile}.{compat:X}.{}{level}",
        if tier == 1 { 'H' } else { 'L' }
    );
    let last = constraints
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    for b in &constraints[..last] {
        s.push_str(&format!(".{b:X}"));
    }
    Some(s)
}

/// `av01.<profile>.<level><tier>.<bitdepth>` from an `av1C` record.
fn av1c_string(d: &[u8]) -> Option<String> {
    if d.len() < 4 || d[0] & 0x80 == 0 {
        return None;
    }
    let profile = d[1] >> 5;
    let level = d[1] & 0x1f;
    let tier = if d[2] & 0x80 != 0 { 'H' } else { 'M' };
    let high_bitdepth = d[2] & 0x40 != 0;
    let twelve = d[2] & 0x20 != 0;
    let depth = match (high_bitdepth, twelve) {
        (true, true) => 12,
        (true, false) => 10,
        _ => 8,
    };
    Some(format!("av01.{profile}.{level:02}{tier}.{depth:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psychovisual_tuning_is_off_in_the_slower_tiers_unless_asked_for() {
        let rung = vtx_domain::plan_ladder(1280, 720).pop().unwrap();
        let params = |codec: VideoCodec, tier, psy| {
            let key = match codec {
                VideoCodec::H264 => "x264-params",
                _ => "x265-params",
            };
            encoder_options(codec, tier, &rung, 60, psy)
                .get(key)
                .unwrap()
                .to_string()
        };
        assert!(params(VideoCodec::H264, Tier::High, false).ends_with(":psy=0"));
        assert!(!params(VideoCodec::H264, Tier::High, true).contains("psy"));
        // The fast tier keeps x264's defaults: at veryfast psy-rd barely acts.
        assert!(!params(VideoCodec::H264, Tier::Fast, false).contains("psy"));
        assert!(params(VideoCodec::Hevc, Tier::Extreme, false).ends_with(":psy-rd=0:psy-rdoq=0"));
        assert!(!params(VideoCodec::Hevc, Tier::Extreme, true).contains("psy"));
    }

    #[test]
    fn avc_string_from_avcc() {
        assert_eq!(
            codec_string(VideoCodec::H264, &[1, 0x64, 0x00, 0x1F, 0xff]),
            "avc1.64001F"
        );
        assert_eq!(
            codec_string(VideoCodec::H264, &[1, 0x4D, 0x40, 0x1F]),
            "avc1.4D401F"
        );
    }

    #[test]
    fn hevc_string_from_hvcc() {
        // Main profile, main tier, level 3.1 (93), progressive + frame-only constraint flags.
        let mut d = vec![1u8, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 93];
        d.extend([0u8; 10]);
        assert_eq!(codec_string(VideoCodec::Hevc, &d), "hvc1.1.6.L93.90");
    }

    #[test]
    fn av1_string_from_av1c() {
        // Main profile, level 4.0 (8), main tier, 8 bit.
        assert_eq!(
            codec_string(VideoCodec::Av1, &[0x81, 0x08, 0x0C, 0x00]),
            "av01.0.08M.08"
        );
    }
}
