//! How the client turns a file into GOP-aligned chunks: a [`Cutter`] its owner gives it (the
//! `vtx` CLI and the tests use `vtx-chunker`'s, built on FFmpeg), so this crate stays an HTTP
//! client. A client without one sends files whole over tus.

use std::path::{Path, PathBuf};

/// One chunk cut from a file, on disk.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub index: u32,
    pub path: PathBuf,
    /// Where the chunk's video starts and ends on the source's clock, in seconds.
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub bytes: u64,
}

/// A file cut into chunks, with the rotation its chunks cannot carry (the upload declares it).
#[derive(Clone, Debug)]
pub struct Cut {
    pub chunks: Vec<Chunk>,
    /// Clockwise degrees.
    pub rotation: u32,
}

#[derive(Debug)]
pub enum CutError {
    /// The file cannot be read, or cutting ran out of time: nothing sensible to send whole
    /// either.
    Unreadable(anyhow::Error),
    /// The file cannot go into chunks (a codec, missing timestamps, an edit list, open GOPs,
    /// not a video at all): it goes whole, and the service says what it can do with it.
    Unchunkable(String),
}

/// Cuts a file into chunks of at least `seconds` of video each, ending on keyframes, written
/// under `dir`. Runs off the async runtime.
pub trait Cutter: Send + Sync {
    fn cut(&self, input: &Path, dir: &Path, seconds: f64) -> Result<Cut, CutError>;
}
