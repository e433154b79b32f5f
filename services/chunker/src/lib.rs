//! The FFmpeg chunk cutter the `vtx` client uploads with: a file is remuxed (never re-encoded)
//! into MPEG-TS chunks that each start on a keyframe, as a phone's encoder would hand them over.
//! Apart from `vtx-client`, so the HTTP client links no FFmpeg.

use std::path::Path;
use std::time::Duration;

use vtx_client::{Chunk, Cut, CutError, Cutter};
use vtx_media::{Deadline, MediaError, cut_chunks, source_rotation};

/// How long cutting one file may take.
const CUT_DEADLINE: Duration = Duration::from_secs(600);

/// Cuts with FFmpeg's libraries (`vtx_media::cut_chunks`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FfmpegCutter;

impl Cutter for FfmpegCutter {
    fn cut(&self, input: &Path, dir: &Path, seconds: f64) -> Result<Cut, CutError> {
        let cut = || -> Result<Cut, MediaError> {
            let chunks = cut_chunks(input, dir, seconds, Deadline::after(CUT_DEADLINE))?;
            Ok(Cut {
                chunks: chunks
                    .into_iter()
                    .map(|c| Chunk {
                        index: c.index,
                        path: c.path,
                        start_seconds: c.start_seconds,
                        end_seconds: c.end_seconds,
                        bytes: c.bytes,
                    })
                    .collect(),
                rotation: source_rotation(input)?,
            })
        };
        cut().map_err(|e| match e {
            e @ (MediaError::Io(_) | MediaError::Timeout) => CutError::Unreadable(e.into()),
            // Whatever cannot go into MPEG-TS chunks (a codec, missing timestamps, an edit
            // list, open GOPs, a muxer's refusal, even a file that is no video) goes whole.
            why => CutError::Unchunkable(why.to_string()),
        })
    }
}

/// The cutter as a client takes it.
pub fn cutter() -> std::sync::Arc<dyn Cutter> {
    std::sync::Arc::new(FfmpegCutter)
}
