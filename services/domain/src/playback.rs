//! Which rendition a player should load: the client says where it plays (an in-feed player or
//! full screen), on which network, on what screen, and which codecs it decodes; vtx answers with
//! the lowest bitrate that still looks sharp there.
//!
//! The rule, in order:
//! 1. The player's pixels: the screen in device pixels (CSS size x `dpr`), times
//!    `feed_scale` for an in-feed player (full screen: the whole screen).
//! 2. The picture fitted into the player keeps its aspect; the height it is shown at is what a
//!    rendition must cover. A rendition covers it when its height is at least `sharpness` of it
//!    (a little upscaling is invisible on a phone).
//! 3. Among the renditions in a codec the client decodes (H.264 always), the lowest bitrate that
//!    covers; when none covers, the largest.
//! 4. On cellular, nothing above `cellular_max_bitrate`: the choice steps down to the largest
//!    rendition under the cap (the smallest when every one is over it).

use serde::{Deserialize, Serialize};

use crate::text::text_enum;

text_enum!(
    /// Where the video plays.
    Form {
    /// A small player in a scrolling feed.
    Feed => "feed",
    /// The whole screen (stories, the player opened).
    Fullscreen => "fullscreen",
});

text_enum!(
    /// The viewer's network.
    Network {
    Wifi => "wifi",
    Cellular => "cellular",
});

/// The configurable part of the rule (`VTX_PLAYBACK_*`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaybackPolicy {
    /// An in-feed player's size as a share of the screen's (each side).
    pub feed_scale: f64,
    /// A rendition covers the shown height from this share of it.
    pub sharpness: f64,
    /// The most bits per second a rendition may take on cellular.
    pub cellular_max_bitrate: u64,
}

impl Default for PlaybackPolicy {
    fn default() -> Self {
        Self {
            feed_scale: 0.5,
            sharpness: 0.9,
            cellular_max_bitrate: 2_000_000,
        }
    }
}

/// The player, as the client describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Viewer {
    pub form: Form,
    pub network: Network,
    /// Screen size in CSS pixels (either orientation).
    pub screen: (u32, u32),
    /// Device pixels per CSS pixel.
    pub dpr: f64,
    /// Codecs it decodes beyond H.264 (`hevc`, `av1`).
    pub codecs: Vec<String>,
}

/// A rendition the rule can pick.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub bitrate: u64,
}

/// What the rule decided, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Index of the chosen candidate.
    pub index: usize,
    /// The player's size in device pixels.
    pub player: (u32, u32),
    /// The height the picture is shown at in that player.
    pub shown_height: u32,
    /// Whether the cellular cap lowered the choice.
    pub capped: bool,
}

impl Viewer {
    /// The player's size in device pixels.
    pub fn player(&self, policy: &PlaybackPolicy) -> (u32, u32) {
        let scale = self.dpr.clamp(0.5, 5.0)
            * match self.form {
                Form::Feed => policy.feed_scale.clamp(0.05, 1.0),
                Form::Fullscreen => 1.0,
            };
        let px = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
        (px(self.screen.0), px(self.screen.1))
    }

    fn decodes(&self, codec: &str) -> bool {
        codec == "h264" || self.codecs.iter().any(|c| c == codec)
    }
}

/// The height at which a `w`x`h` picture is shown when fitted into `player`, never more than
/// its own (a player does not need more than the source has).
pub fn shown_height((w, h): (u32, u32), player: (u32, u32)) -> u32 {
    if w == 0 || h == 0 {
        return 0;
    }
    let scale = (f64::from(player.0) / f64::from(w)).min(f64::from(player.1) / f64::from(h));
    (f64::from(h) * scale).round() as u32
}

/// Picks a rendition by the rule above; `None` when no candidate is in a codec the client
/// decodes. `picture` is the video's displayed size.
pub fn choose(
    candidates: &[Candidate],
    picture: (u32, u32),
    viewer: &Viewer,
    policy: &PlaybackPolicy,
) -> Option<Choice> {
    let player = viewer.player(policy);
    let shown = shown_height(picture, player);
    let need = (f64::from(shown) * policy.sharpness).floor() as u32;
    let usable: Vec<usize> = (0..candidates.len())
        .filter(|&i| viewer.decodes(&candidates[i].codec))
        .collect();
    let by_bitrate = |a: &usize, b: &usize| candidates[*a].bitrate.cmp(&candidates[*b].bitrate);
    let covering = usable
        .iter()
        .copied()
        .filter(|&i| candidates[i].height >= need)
        .min_by(by_bitrate);
    let largest = || {
        usable.iter().copied().max_by(|a, b| {
            (
                candidates[*a].height,
                std::cmp::Reverse(candidates[*a].bitrate),
            )
                .cmp(&(
                    candidates[*b].height,
                    std::cmp::Reverse(candidates[*b].bitrate),
                ))
        })
    };
    let mut index = covering.or_else(largest)?;
    let mut capped = false;
    if viewer.network == Network::Cellular
        && candidates[index].bitrate > policy.cellular_max_bitrate
    {
        let under = usable
            .iter()
            .copied()
            .filter(|&i| candidates[i].bitrate <= policy.cellular_max_bitrate)
            .max_by(|a, b| {
                (
                    candidates[*a].height,
                    std::cmp::Reverse(candidates[*a].bitrate),
                )
                    .cmp(&(
                        candidates[*b].height,
                        std::cmp::Reverse(candidates[*b].bitrate),
                    ))
            });
        index = under.or_else(|| usable.iter().copied().min_by(by_bitrate))?;
        capped = true;
    }
    Some(Choice {
        index,
        player,
        shown_height: shown,
        capped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Candidate> {
        // A portrait 720x1280 video's H.264 ladder, plus an added HEVC 720p.
        let r = |codec: &str, w, h, kbps: u64| Candidate {
            codec: codec.into(),
            width: w,
            height: h,
            bitrate: kbps * 1000,
        };
        vec![
            r("h264", 240, 426, 350),
            r("h264", 360, 640, 700),
            r("h264", 540, 960, 1400),
            r("h264", 720, 1280, 2600),
            r("hevc", 720, 1280, 1700),
        ]
    }

    fn viewer(form: Form, network: Network, screen: (u32, u32), dpr: f64) -> Viewer {
        Viewer {
            form,
            network,
            screen,
            dpr,
            codecs: Vec::new(),
        }
    }

    #[test]
    fn the_lowest_bitrate_that_covers_the_player_by_form_network_screen_and_codecs() {
        use Form::*;
        use Network::*;
        let policy = PlaybackPolicy::default();
        let phone = (390, 844); // CSS pixels of a current phone
        #[rustfmt::skip]
        let table: Vec<(Viewer, usize, &str)> = vec![
            // Full screen at dpr 3 shows 1688 px high: nothing covers, the largest H.264.
            (viewer(Fullscreen, Wifi, phone, 3.0), 3, "720p h264"),
            // The same phone in a feed player: half each side, 1040 px shown; 960 covers.
            (viewer(Feed, Wifi, phone, 3.0), 2, "540p covers 844"),
            // A small, low-density screen: 640 shown, 0.9 of it = 576 -> 640p.
            (viewer(Fullscreen, Wifi, (360, 640), 1.0), 1, "360p"),
            // A feed player on that screen: 320 shown -> the smallest (426 >= 288).
            (viewer(Feed, Wifi, (360, 640), 1.0), 0, "240p"),
            // Cellular caps 2.6 Mb/s at 2 Mb/s: the largest under it.
            (viewer(Fullscreen, Cellular, phone, 3.0), 2, "capped to 540p"),
            // Cellular does not raise a choice already under the cap.
            (viewer(Feed, Cellular, (360, 640), 1.0), 0, "240p on cellular"),
            // Landscape screen, portrait video: the height limits; 390*2=780 shown -> 960.
            (viewer(Fullscreen, Wifi, (844, 390), 2.0), 2, "landscape screen"),
        ];
        for (v, want, why) in table {
            let got = choose(&ladder(), (720, 1280), &v, &policy).unwrap();
            assert_eq!(got.index, want, "{why}: {got:?}");
        }
    }

    #[test]
    fn a_declared_codec_wins_when_it_covers_for_fewer_bits() {
        let policy = PlaybackPolicy::default();
        let mut v = viewer(Form::Fullscreen, Network::Wifi, (390, 844), 3.0);
        v.codecs = vec!["hevc".into()];
        // Both 720p renditions are the largest; HEVC is the smaller of the two.
        assert_eq!(
            choose(&ladder(), (720, 1280), &v, &policy).unwrap().index,
            4
        );
        v.network = Network::Cellular;
        // 1.7 Mb/s HEVC is under the cellular cap: no step down.
        let c = choose(&ladder(), (720, 1280), &v, &policy).unwrap();
        assert_eq!((c.index, c.capped), (4, false));
    }

    #[test]
    fn nothing_to_choose_without_a_decodable_rendition() {
        let only_av1 = vec![Candidate {
            codec: "av1".into(),
            width: 720,
            height: 1280,
            bitrate: 1_000_000,
        }];
        let v = viewer(Form::Feed, Network::Wifi, (390, 844), 3.0);
        assert_eq!(
            choose(&only_av1, (720, 1280), &v, &PlaybackPolicy::default()),
            None
        );
    }

    #[test]
    fn shown_height_fits_the_picture_into_the_player() {
        assert_eq!(shown_height((720, 1280), (1170, 2532)), 2080);
        assert_eq!(shown_height((1280, 720), (1170, 2532)), 658);
        assert_eq!(shown_height((0, 0), (100, 100)), 0);
    }
}
