//! How one decode feeds the rungs of a ladder.
//!
//! - **Cascaded scaling.** A rung is scaled from the smallest rung at least twice its size when
//!   there is one (1080p -> 720p -> 360p, 480p -> 240p), not from the decoded frame: a 2:1
//!   bicubic step from 480p costs a fraction of a 3:1 step from 720p, and the two results differ
//!   by about 54 dB PSNR (`ffmpeg ... psnr` on the shared 720p clip), far below any encode's
//!   noise.
//! - **A thread per rung.** Unless the request is single-threaded, every rung scales and encodes
//!   on its own thread, fed through a short bounded queue, so the decoder, the scalers and the
//!   encoders' serial parts run side by side instead of taking turns on one thread. A rung's
//!   children are fed by the rung's own thread. Single-threaded requests (slices on
//!   one-core workers) run every rung inline, in the same order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use ffmpeg_next::{Packet, Rational, frame};

use crate::MediaError;

/// Frames a rung's queue holds before the feeder waits: enough to smooth out uneven frame
/// costs, few enough that memory stays flat (a 1080p frame is 3 MiB).
const QUEUE_FRAMES: usize = 4;

/// What flows down the tree: a frame with its output pts, or an audio packet for every muxer.
#[derive(Clone)]
pub(crate) enum Item {
    Video(Arc<frame::Video>, i64),
    Audio(Arc<Packet>, Rational),
}

/// One rung: encodes the frames it is given and muxes them with the audio.
pub(crate) trait Sink {
    type Report: Send + 'static;
    /// Encodes a frame and returns the scaled frame, which the rung's children are fed.
    fn video(&mut self, frame: &frame::Video, pts: i64) -> Result<frame::Video, MediaError>;
    fn audio(&mut self, packet: &Packet, time_base: Rational) -> Result<(), MediaError>;
    fn finish(self) -> Result<Self::Report, MediaError>;
}

/// For each rung (width, height), the rung it is scaled from: the smallest other rung at least
/// twice as wide and as high, or `None` for the decoded frame.
pub(crate) fn cascade_parents(sizes: &[(u32, u32)]) -> Vec<Option<usize>> {
    // Two pixels of slack: rungs have even sizes (854 is 2 x 427 rounded down to 426 x 2 + 2).
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

fn handle<S: Sink>(sink: &mut S, item: &Item) -> Result<Item, MediaError> {
    match item {
        Item::Video(f, pts) => Ok(Item::Video(Arc::new(sink.video(f, *pts)?), *pts)),
        Item::Audio(p, tb) => {
            sink.audio(p, *tb)?;
            Ok(item.clone())
        }
    }
}

pub(crate) enum Fanout<S: Sink> {
    Inline {
        sinks: Vec<S>,
        parents: Vec<Option<usize>>,
        /// Parents before their children.
        order: Vec<usize>,
    },
    Threaded {
        /// Queues of the rungs fed from the decoded frame; the others are fed by their parent.
        roots: Vec<mpsc::SyncSender<Item>>,
        threads: Vec<JoinHandle<Result<Option<S::Report>, MediaError>>>,
        /// Set when the run fails: rungs stop without flushing their encoders.
        abort: Arc<AtomicBool>,
    },
}

impl<S: Sink + Send + 'static> Fanout<S> {
    pub(crate) fn new(
        sinks: Vec<S>,
        parents: Vec<Option<usize>>,
        threaded: bool,
    ) -> Result<Self, MediaError> {
        assert_eq!(sinks.len(), parents.len());
        let depth = |mut i: usize| {
            let mut d = 0;
            while let Some(p) = parents[i] {
                i = p;
                d += 1;
                assert!(d <= parents.len(), "the cascade has a cycle");
            }
            d
        };
        if !threaded {
            let mut order: Vec<usize> = (0..sinks.len()).collect();
            order.sort_by_key(|&i| depth(i));
            return Ok(Fanout::Inline {
                sinks,
                parents,
                order,
            });
        }
        for i in 0..parents.len() {
            depth(i);
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..sinks.len())
            .map(|_| mpsc::sync_channel::<Item>(QUEUE_FRAMES))
            .unzip();
        let mut children: Vec<Vec<mpsc::SyncSender<Item>>> = vec![Vec::new(); sinks.len()];
        let mut roots = Vec::new();
        for (i, tx) in senders.into_iter().enumerate() {
            match parents[i] {
                Some(p) => children[p].push(tx),
                None => roots.push(tx),
            }
        }
        let abort = Arc::new(AtomicBool::new(false));
        // Built before the threads start, so that a failed spawn stops those already running.
        let mut fan = Fanout::Threaded {
            roots,
            threads: Vec::new(),
            abort: abort.clone(),
        };
        for (i, ((sink, rx), kids)) in sinks.into_iter().zip(receivers).zip(children).enumerate() {
            let abort = abort.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vtx-rung-{i}"))
                .spawn(move || rung_loop(sink, rx, kids, &abort))?;
            if let Fanout::Threaded { threads, .. } = &mut fan {
                threads.push(handle);
            }
        }
        Ok(fan)
    }

    /// Feeds one item to every rung. A rung that failed ends the run with its own error.
    pub(crate) fn send(&mut self, item: Item) -> Result<(), MediaError> {
        match self {
            Fanout::Inline {
                sinks,
                parents,
                order,
            } => {
                let mut made: Vec<Option<Item>> = vec![None; sinks.len()];
                for &i in order.iter() {
                    let input = match parents[i] {
                        None => &item,
                        Some(p) => made[p].as_ref().expect("parents run first"),
                    };
                    made[i] = Some(handle(&mut sinks[i], input)?);
                }
                Ok(())
            }
            Fanout::Threaded { roots, .. } => {
                if roots.iter().all(|tx| tx.send(item.clone()).is_ok()) {
                    Ok(())
                } else {
                    Err(self.stop())
                }
            }
        }
    }

    /// Flushes every rung and returns their reports in the order the sinks were given.
    pub(crate) fn finish(mut self) -> Result<Vec<S::Report>, MediaError> {
        match &mut self {
            Fanout::Inline { sinks, .. } => std::mem::take(sinks)
                .into_iter()
                .map(Sink::finish)
                .collect(),
            Fanout::Threaded { roots, threads, .. } => {
                roots.clear();
                let results: Vec<_> = std::mem::take(threads).into_iter().map(join).collect();
                let mut reports = Vec::with_capacity(results.len());
                for r in results {
                    reports.push(r?.ok_or_else(stopped)?);
                }
                Ok(reports)
            }
        }
    }

    /// Stops every rung without flushing, waits for them, and returns the first rung's error.
    fn stop(&mut self) -> MediaError {
        let Fanout::Threaded {
            roots,
            threads,
            abort,
        } = self
        else {
            return stopped();
        };
        abort.store(true, Ordering::Relaxed);
        roots.clear();
        std::mem::take(threads)
            .into_iter()
            .map(join)
            .find_map(Result::err)
            .unwrap_or_else(stopped)
    }
}

impl<S: Sink> Drop for Fanout<S> {
    /// A run that ends early (an error, a deadline) still waits for its rung threads, so that
    /// no thread writes an output after the caller has removed it.
    fn drop(&mut self) {
        if let Fanout::Threaded {
            roots,
            threads,
            abort,
        } = self
        {
            abort.store(true, Ordering::Relaxed);
            roots.clear();
            for t in std::mem::take(threads) {
                let _ = t.join();
            }
        }
    }
}

fn stopped() -> MediaError {
    MediaError::Io(std::io::Error::other("a rung stopped before the end"))
}

fn join<R>(t: JoinHandle<Result<R, MediaError>>) -> Result<R, MediaError> {
    t.join()
        .unwrap_or_else(|_| Err(MediaError::Io(std::io::Error::other("a rung panicked"))))
}

/// A rung's thread: encodes what its queue brings and feeds its children, until the feeder
/// hangs up; then flushes, unless the run was aborted (`None`).
fn rung_loop<S: Sink>(
    mut sink: S,
    rx: mpsc::Receiver<Item>,
    children: Vec<mpsc::SyncSender<Item>>,
    abort: &AtomicBool,
) -> Result<Option<S::Report>, MediaError> {
    for item in rx {
        if abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let made = handle(&mut sink, &item)?;
        for child in &children {
            // A child that failed has hung up; it reports its own error when joined.
            let _ = child.send(made.clone());
        }
    }
    drop(children);
    if abort.load(Ordering::Relaxed) {
        return Ok(None);
    }
    sink.finish().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    /// Records what it was fed; "scales" by halving the frame's width.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        fail_at: Option<i64>,
    }

    impl Sink for Probe {
        type Report = (&'static str, usize);
        fn video(&mut self, f: &frame::Video, pts: i64) -> Result<frame::Video, MediaError> {
            if self.fail_at == Some(pts) {
                return Err(MediaError::CorruptStream(format!("{} at {pts}", self.name)));
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {pts} {}", self.name, f.width()));
            Ok(frame::Video::new(f.format(), f.width() / 2, f.height() / 2))
        }
        fn audio(&mut self, _: &Packet, _: Rational) -> Result<(), MediaError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} audio", self.name));
            Ok(())
        }
        fn finish(self) -> Result<Self::Report, MediaError> {
            let n = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with(self.name))
                .count();
            Ok((self.name, n))
        }
    }

    fn probes(log: &Arc<Mutex<Vec<String>>>, fail: Option<(&str, i64)>) -> Vec<Probe> {
        ["top", "mid", "low"]
            .into_iter()
            .map(|name| Probe {
                name,
                log: log.clone(),
                fail_at: fail.filter(|(n, _)| *n == name).map(|(_, at)| at),
            })
            .collect()
    }

    fn feed(fan: &mut Fanout<Probe>, frames: i64) -> Result<(), MediaError> {
        crate::init();
        for pts in 0..frames {
            let f = frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, 64, 64);
            fan.send(Item::Video(Arc::new(f), pts))?;
            fan.send(Item::Audio(Arc::new(Packet::new(4)), Rational(1, 48000)))?;
        }
        Ok(())
    }

    #[test]
    fn every_rung_gets_every_item_and_children_get_their_parents_frames() {
        for threaded in [false, true] {
            let log = Arc::new(Mutex::new(Vec::new()));
            // low (listed first) is fed by mid, mid by top.
            let mut sinks = probes(&log, None);
            sinks.rotate_right(1);
            let mut fan = Fanout::new(sinks, vec![Some(2), None, Some(1)], threaded).unwrap();
            feed(&mut fan, 10).unwrap();
            let reports = fan.finish().unwrap();
            assert_eq!(reports, vec![("low", 20), ("top", 20), ("mid", 20)]);
            let log = log.lock().unwrap();
            for pts in 0..10 {
                for (name, width) in [("top", 64), ("mid", 32), ("low", 16)] {
                    assert!(
                        log.contains(&format!("{name} {pts} {width}")),
                        "{name} {pts}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failing_rung_ends_the_run_with_its_own_error() {
        for threaded in [false, true] {
            for failing in ["top", "low"] {
                let log = Arc::new(Mutex::new(Vec::new()));
                let sinks = probes(&log, Some((failing, 3)));
                let fan = Fanout::new(sinks, vec![None, Some(0), Some(1)], threaded);
                let mut fan = fan.unwrap();
                let err = match feed(&mut fan, 50) {
                    Err(e) => e,
                    Ok(()) => fan.finish().expect_err("the run fails"),
                };
                assert_eq!(
                    err.to_string(),
                    format!("the input is corrupt: {failing} at 3"),
                    "threaded {threaded}"
                );
            }
        }
    }
}
