//! Slice planning: where the video track is cut for parallel transcoding.
//!
//! Cuts fall only on keyframes, so no GOP is ever split between slices. Each slice owns the
//! presentation-time window `[start, end)`: a frame belongs to exactly one slice whatever the
//! decode order, which is what keeps frame counts exact across a split and merge.

use serde::{Deserialize, Serialize};

/// One slice, in the source video stream's time base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceWindow {
    pub index: u32,
    /// Presentation time of the keyframe the slice starts on (inclusive).
    pub start: i64,
    /// Presentation time of the next slice's keyframe, or the stream's end (exclusive).
    pub end: i64,
}

/// The output's keyframe grid, in the stream's ticks: keyframes are forced every `period` from
/// `origin` (the first shown frame). A keyframe within `tolerance` of a grid line is on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub origin: i64,
    pub period: i64,
    pub tolerance: i64,
}

impl Grid {
    fn holds(&self, t: i64) -> bool {
        let r = (t - self.origin).rem_euclid(self.period.max(1));
        r <= self.tolerance || self.period - r <= self.tolerance
    }
}

/// Plans slices of about `target_ticks` each from keyframe presentation times (ascending, the
/// first one being where the stream starts) and the stream's end. A slice may hold several GOPs
/// but never part of one; a final slice shorter than half the target joins the one before it.
pub fn plan_slices(keyframes: &[i64], stream_end: i64, target_ticks: i64) -> Vec<SliceWindow> {
    plan_slices_on_grid(keyframes, stream_end, target_ticks, None)
}

/// As `plan_slices`, but where a source keyframe falls on the output's keyframe `grid` within
/// half a target of a cut, the cut moves to it: each slice's encode starts with a keyframe,
/// and one on the grid is one the whole-video encode has too, so slicing adds no keyframes
/// (and costs no bytes, and changes no quality) there. With a grid, cut n aims at n targets
/// from the start, so slices stay even on average.
pub fn plan_slices_on_grid(
    keyframes: &[i64],
    stream_end: i64,
    target_ticks: i64,
    grid: Option<Grid>,
) -> Vec<SliceWindow> {
    let Some(&first) = keyframes.first() else {
        return Vec::new();
    };
    let target = target_ticks.max(1);
    let mut cuts = vec![first];
    match grid {
        None => {
            for &k in &keyframes[1..] {
                let last = *cuts.last().expect("non-empty");
                if k > last && k < stream_end && k - last >= target {
                    cuts.push(k);
                }
            }
        }
        Some(g) => {
            // Cut n aims at first + n x target (so slices even out) and takes the keyframe on
            // the grid nearest to that, within half a target; without one, the keyframe
            // nearest to it. No slice is shorter than half a target.
            loop {
                let last = *cuts.last().expect("non-empty");
                let ideal = (first + cuts.len() as i64 * target).max(last + target / 2);
                let window = |k: &&i64| **k >= last + target / 2 && **k < stream_end;
                let on_grid = keyframes
                    .iter()
                    .filter(window)
                    .filter(|k| (**k - ideal).abs() <= target / 2 && g.holds(**k))
                    .min_by_key(|k| (**k - ideal).abs());
                let next = on_grid.or_else(|| {
                    keyframes
                        .iter()
                        .filter(window)
                        .min_by_key(|k| (**k - ideal).abs())
                });
                match next {
                    Some(&k) => cuts.push(k),
                    None => break,
                }
            }
        }
    }
    // A short tail joins the slice before it.
    if cuts.len() > 1 && 2 * (stream_end - cuts[cuts.len() - 1]) < target {
        cuts.pop();
    }
    cuts.iter()
        .enumerate()
        .map(|(i, &start)| SliceWindow {
            index: i as u32,
            start,
            end: cuts.get(i + 1).copied().unwrap_or(stream_end),
        })
        .collect()
}

/// The order to encode `windows` in, longest first (positions into `windows`): cuts fall on
/// keyframes, so slices differ in length, and starting the long ones first leaves the short
/// ones to even the workers out at the end.
pub fn longest_first(windows: &[SliceWindow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(windows[i].end - windows[i].start));
    order
}

/// A slice length for a video of `duration_s` seconds spread over `workers`: about four slices
/// per worker, so that slices of uneven length (cuts fall on the source's keyframes) even out,
/// none shorter than `min_s` nor longer than `max_s`.
pub fn slice_seconds_for(duration_s: f64, workers: u32, min_s: f64, max_s: f64) -> f64 {
    let rounds = f64::from(workers.max(1)) * 4.0;
    (duration_s / rounds).clamp(min_s, max_s.max(min_s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_longest_slices_come_first() {
        let w = |index, start, end| super::SliceWindow { index, start, end };
        let windows = [w(0, 0, 4), w(1, 4, 10), w(2, 10, 14), w(3, 14, 20)];
        assert_eq!(super::longest_first(&windows), vec![1, 3, 0, 2]);
    }

    use super::*;

    fn starts(s: &[SliceWindow]) -> Vec<i64> {
        s.iter().map(|w| w.start).collect()
    }

    #[test]
    fn cuts_only_on_keyframes_and_covers_the_stream() {
        // Keyframes every 2 s (tick = 1 s), 20 s stream, 5 s target.
        let kf: Vec<i64> = (0..10).map(|i| i * 2).collect();
        let s = plan_slices(&kf, 20, 5);
        assert_eq!(starts(&s), vec![0, 6, 12]);
        assert_eq!(s.last().unwrap().end, 20);
        for w in s.windows(2) {
            assert_eq!(w[0].end, w[1].start, "windows are contiguous");
        }
        assert!(s.iter().all(|w| kf.contains(&w.start)));
    }

    #[test]
    fn a_short_tail_joins_the_previous_slice() {
        let kf = [0, 10, 20];
        let s = plan_slices(&kf, 22, 10);
        assert_eq!(starts(&s), vec![0, 10]);
        assert_eq!(s[1].end, 22);
    }

    #[test]
    fn one_gop_longer_than_the_target_stays_whole() {
        assert_eq!(plan_slices(&[0], 100, 10).len(), 1);
        assert_eq!(plan_slices(&[], 100, 10).len(), 0);
    }

    #[test]
    fn non_zero_start_is_kept() {
        let s = plan_slices(&[1000, 3000, 5000], 7000, 2000);
        assert_eq!(starts(&s), vec![1000, 3000, 5000]);
        assert_eq!(s[0].index, 0);
    }

    #[test]
    fn cuts_move_to_keyframes_on_the_output_grid() {
        // Keyframes every second, output keyframes every 2 s: 5 s slices cut on even seconds
        // nearest 5, 10, 15.
        let kf: Vec<i64> = (0..20).collect();
        let grid = Grid {
            origin: 0,
            period: 2,
            tolerance: 0,
        };
        let s = plan_slices_on_grid(&kf, 20, 5, Some(grid));
        assert!(s.iter().all(|w| w.start % 2 == 0), "{s:?}");
        assert_eq!(s.len(), 4);
        assert_eq!(s.last().unwrap().end, 20);
        // Without a keyframe on the grid near a cut, the keyframe nearest its aim (1 + 5n).
        let odd: Vec<i64> = (0..10).map(|i| i * 2 + 1).collect();
        let s = plan_slices_on_grid(&odd, 20, 5, Some(grid));
        assert_eq!(starts(&s), vec![1, 5, 11, 15]);
        // Keyframes a tick before the aim are taken, not skipped.
        let s = plan_slices_on_grid(&[0, 527, 1055, 1583], 2000, 528, Some(grid));
        assert_eq!(starts(&s), vec![0, 527, 1055, 1583]);
        // A grid that is not there changes nothing.
        assert_eq!(
            plan_slices_on_grid(&kf, 20, 5, None),
            plan_slices(&kf, 20, 5)
        );
    }

    #[test]
    fn slice_length_follows_duration_and_workers() {
        assert_eq!(slice_seconds_for(300.0, 2, 4.0, 30.0), 30.0);
        assert_eq!(slice_seconds_for(10.0, 4, 4.0, 30.0), 4.0);
        assert_eq!(slice_seconds_for(120.0, 5, 4.0, 30.0), 6.0);
    }
}
