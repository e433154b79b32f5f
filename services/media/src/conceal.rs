//! Damaged sources, handled as the `ffmpeg` command line does: an isolated packet the decoder
//! cannot turn into a frame is concealed, so a rendition keeps the source's frame count and
//! timing. Video: the frame shown before it is shown again at its time (the one after it, when
//! none came before). Audio (in `audio`): silence for its time. Concealed frames are counted,
//! and only damage beyond a [`DamagePolicy`] fails the work, as `corrupt-stream`.

use std::collections::BTreeSet;

use crate::MediaError;
use ffmpeg_next::frame;
pub use vtx_domain::damage::{Concealed, DamagePolicy};

/// Decoding errors read in a row before a drain gives up until the next packet (each error is a
/// frame that will be concealed; this only keeps a decoder that errs forever from spinning).
pub(crate) const MAX_ERRORS_IN_A_ROW: u32 = 64;

/// Whether a frame is a concealment (ours, or the decoder's own error concealment).
pub(crate) fn is_concealed(f: &frame::Video) -> bool {
    // SAFETY: reads two plain fields of a live frame.
    unsafe {
        let p = f.as_ptr();
        (*p).flags & ffmpeg_next::ffi::AV_FRAME_FLAG_CORRUPT != 0 || (*p).decode_error_flags != 0
    }
}

/// A new reference to `f`'s picture (no pixels copied), with its own properties.
pub(crate) fn frame_ref(f: &frame::Video) -> Result<frame::Video, MediaError> {
    let mut r = frame::Video::empty();
    // SAFETY: `r` is freshly allocated and clean, as av_frame_ref requires; `f` is live.
    let ret = unsafe { ffmpeg_next::ffi::av_frame_ref(r.as_mut_ptr(), f.as_ptr()) };
    if ret < 0 {
        return Err(MediaError::ffmpeg("referencing a frame")(
            ffmpeg_next::Error::from(ret),
        ));
    }
    Ok(r)
}

/// Tracks which presentation times were sent to the video decoder and fills in the ones that
/// never came out. Decoders give frames in presentation order, so a frame at time `t` means
/// every expected time before `t` is lost.
#[derive(Default)]
pub(crate) struct VideoConcealer {
    expected: BTreeSet<i64>,
    last: Option<frame::Video>,
    /// A packet came without a presentation time (AVI stores none for frames that B-frames
    /// follow): the decoder's timestamps are then its own guesses, which cannot say which frame
    /// was lost, so nothing is concealed (decoding errors still are, by the decoder).
    blind: bool,
}

impl VideoConcealer {
    /// A packet with presentation time `pts` went to the decoder.
    pub(crate) fn sent(&mut self, pts: Option<i64>) {
        match pts {
            Some(t) if !self.blind => {
                self.expected.insert(t);
            }
            _ => {
                self.blind = true;
                self.expected.clear();
            }
        }
    }

    /// The decoder gave `f` (its timestamp already set): returns the frames to show before it,
    /// concealing lost ones. A frame without a timestamp takes the next expected one.
    pub(crate) fn decoded(
        &mut self,
        f: &mut frame::Video,
    ) -> Result<Vec<frame::Video>, MediaError> {
        if self.blind {
            return Ok(Vec::new());
        }
        let t = match f.pts() {
            Some(t) => t,
            None => match self.expected.first().copied() {
                Some(t) => {
                    f.set_pts(Some(t));
                    t
                }
                None => return Ok(Vec::new()),
            },
        };
        let lost: Vec<i64> = self.expected.range(..t).copied().collect();
        let mut out = Vec::with_capacity(lost.len());
        for m in lost {
            self.expected.remove(&m);
            out.push(concealment(self.last.as_ref().unwrap_or(f), m)?);
        }
        self.expected.remove(&t);
        self.last = Some(frame_ref(f)?);
        Ok(out)
    }

    /// At the end of the stream: the expected frames that never came.
    pub(crate) fn finish(&mut self) -> Result<Vec<frame::Video>, MediaError> {
        let Some(last) = self.last.take() else {
            return Ok(Vec::new());
        };
        std::mem::take(&mut self.expected)
            .into_iter()
            .map(|m| concealment(&last, m))
            .collect()
    }
}

/// `like` shown again at time `pts`, marked as a concealment.
fn concealment(like: &frame::Video, pts: i64) -> Result<frame::Video, MediaError> {
    let mut c = frame_ref(like)?;
    c.set_pts(Some(pts));
    // SAFETY: sets a plain field of a frame this function owns.
    unsafe { (*c.as_mut_ptr()).flags |= ffmpeg_next::ffi::AV_FRAME_FLAG_CORRUPT };
    Ok(c)
}

/// Counts concealed frames among those kept, and the longest run of them.
#[derive(Debug, Default)]
pub(crate) struct DamageCount {
    pub(crate) frames: u64,
    /// Where the current run started (seconds) and how many frames it holds.
    run: Option<(f64, u64)>,
    pub(crate) longest: (u64, f64),
}

impl DamageCount {
    /// A kept frame at `seconds`, concealed or not; `frame_seconds` is one frame's length.
    pub(crate) fn frame(&mut self, seconds: f64, concealed: bool, frame_seconds: f64) {
        if concealed {
            self.frames += 1;
            let (start, n) = self.run.get_or_insert((seconds, 0));
            *n += 1;
            let (start, n) = (*start, *n);
            let length = seconds + frame_seconds - start;
            if length > self.longest.1 {
                self.longest = (n, length);
            }
        } else {
            self.run = None;
        }
    }
}
