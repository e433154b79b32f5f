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

/// Plans slices of about `target_ticks` each from keyframe presentation times (ascending, the
/// first one being where the stream starts) and the stream's end. A slice may hold several GOPs
/// but never part of one; a final slice shorter than half the target joins the one before it.
pub fn plan_slices(keyframes: &[i64], stream_end: i64, target_ticks: i64) -> Vec<SliceWindow> {
    let Some(&first) = keyframes.first() else {
        return Vec::new();
    };
    let target = target_ticks.max(1);
    let mut cuts = vec![first];
    for &k in keyframes.iter().skip(1) {
        let last = *cuts.last().expect("non-empty");
        if k <= last || k >= stream_end {
            continue;
        }
        if k - last >= target {
            cuts.push(k);
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

/// A slice length for a video of `duration_s` seconds spread over `workers`: about four slices
/// per worker, so that slices of uneven length (cuts fall on the source's keyframes) even out,
/// none shorter than `min_s` nor longer than `max_s`.
pub fn slice_seconds_for(duration_s: f64, workers: u32, min_s: f64, max_s: f64) -> f64 {
    let rounds = f64::from(workers.max(1)) * 4.0;
    (duration_s / rounds).clamp(min_s, max_s.max(min_s))
}

#[cfg(test)]
mod tests {
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
    fn slice_length_follows_duration_and_workers() {
        assert_eq!(slice_seconds_for(300.0, 2, 4.0, 30.0), 30.0);
        assert_eq!(slice_seconds_for(10.0, 4, 4.0, 30.0), 4.0);
        assert_eq!(slice_seconds_for(120.0, 5, 4.0, 30.0), 6.0);
    }
}
