//! Cascaded scaling: a rung is scaled from the smallest rung at least twice its size when there
//! is one (1080p -> 720p -> 360p, 480p -> 240p), not from the decoded frame. A 2:1 bicubic step
//! from 480p costs a fraction of a 3:1 step from 720p, and the two results differ by about
//! 54 dB PSNR (`ffmpeg ... psnr` on the shared 720p clip), far below any encode's noise.

/// For each rung (width, height), the rung it is scaled from: the smallest other rung at least
/// twice as wide and as high, or `None` for the decoded frame.
pub(crate) fn cascade_parents(sizes: &[(u32, u32)]) -> Vec<Option<usize>> {
    // Two pixels of slack: rungs have even sizes (480p is 854 wide, 240p 426).
    let fits = |big: u32, small: u32| big + 2 >= small * 2;
    sizes
        .iter()
        .map(|&(w, h)| {
            sizes
                .iter()
                .enumerate()
                .filter(|(_, (pw, ph))| fits(*pw, w) && fits(*ph, h))
                .min_by_key(|(i, (pw, ph))| (u64::from(*pw) * u64::from(*ph), *i))
                .map(|(i, _)| i)
        })
        .collect()
}

/// The order to feed rungs in: every rung after the one it is scaled from.
pub(crate) fn feeding_order(parents: &[Option<usize>]) -> Vec<usize> {
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = parents[i] {
            i = p;
            d += 1;
            assert!(d <= parents.len(), "the cascade has a cycle");
        }
        d
    };
    let mut order: Vec<usize> = (0..parents.len()).collect();
    order.sort_by_key(|&i| depth(i));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_cascade_from_the_smallest_rung_twice_their_size() {
        // 1080p, 720p, 480p, 360p, 240p.
        let ladder = [
            (1920, 1080),
            (1280, 720),
            (854, 480),
            (640, 360),
            (426, 240),
        ];
        assert_eq!(
            cascade_parents(&ladder),
            vec![None, None, Some(0), Some(1), Some(2)]
        );
        // A 720p source's 4 rungs: only 240p has a rung twice its size other than the source.
        assert_eq!(
            cascade_parents(&ladder[1..]),
            vec![None, None, Some(0), Some(1)]
        );
        // Two codecs of one size never feed each other.
        assert_eq!(
            cascade_parents(&[(1280, 720), (1280, 720)]),
            vec![None, None]
        );
        assert_eq!(cascade_parents(&[(176, 144)]), vec![None]);
    }

    #[test]
    fn parents_are_fed_before_their_children() {
        // Smallest first, as the ladder lists rungs: 240p <- 480p, 360p <- 720p.
        let parents = cascade_parents(&[(426, 240), (640, 360), (854, 480), (1280, 720)]);
        assert_eq!(parents, vec![Some(2), Some(3), None, None]);
        let order = feeding_order(&parents);
        for (i, p) in parents.iter().enumerate() {
            if let Some(p) = p {
                let at = |x| order.iter().position(|&o| o == x).unwrap();
                assert!(at(*p) < at(i), "{order:?}");
            }
        }
    }
}
