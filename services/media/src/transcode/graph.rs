//! The post-decode filter graph every frame passes once (rotation, watermark).

use std::path::Path;

use ffmpeg_next::{Rational, filter, frame};

use crate::MediaError;

use super::*;

/// Rotation and watermark, applied once per decoded frame before the rungs split off.
pub(crate) struct PostDecode {
    graph: filter::Graph,
}

impl PostDecode {
    pub(crate) fn new(
        dec: &ffmpeg_next::decoder::Video,
        tb: Rational,
        rotation: u32,
        watermark: Option<&Path>,
    ) -> Result<Option<Self>, MediaError> {
        let rotate = match rotation % 360 {
            90 => "transpose=clock",
            180 => "hflip,vflip",
            270 => "transpose=cclock",
            _ => "null",
        };
        if rotate == "null" && watermark.is_none() {
            return Ok(None);
        }
        let spec = match watermark {
            None => rotate.to_string(),
            Some(path) => {
                let p = path.to_str().filter(|s| {
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
                });
                let p = p.ok_or_else(|| {
                    MediaError::Io(std::io::Error::other(
                        "watermark path may hold only [A-Za-z0-9/._-]",
                    ))
                })?;
                format!(
                    "[in]{rotate}[base];movie={p}[wm];[base][wm]overlay=main_w-overlay_w-16:16[out]"
                )
            }
        };
        let sar = dec.aspect_ratio();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            dec.width(),
            dec.height(),
            ffmpeg_next::ffi::AVPixelFormat::from(dec.format()) as i32,
            tb.numerator(),
            tb.denominator(),
            sar.numerator().max(1),
            sar.denominator().max(1),
        );
        let mut graph = filter::Graph::new();
        graph
            .add(&filter::find("buffer").expect("buffer filter"), "in", &args)
            .map_err(MediaError::ffmpeg("creating the video source"))?;
        graph
            .add(
                &filter::find("buffersink").expect("buffersink filter"),
                "out",
                "",
            )
            .map_err(MediaError::ffmpeg("creating the video sink"))?;
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(MediaError::ffmpeg("building the post-decode graph"))?;
        graph
            .validate()
            .map_err(MediaError::ffmpeg("validating the post-decode graph"))?;
        Ok(Some(Self { graph }))
    }

    pub(crate) fn push(&mut self, f: &frame::Video) -> Result<(), MediaError> {
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .add(f)
            .map_err(MediaError::ffmpeg("filtering video"))
    }

    pub(crate) fn flush(&mut self) -> Result<(), MediaError> {
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .flush()
            .map_err(MediaError::ffmpeg("flushing the video graph"))
    }

    /// Frames the graph has ready.
    pub(crate) fn drain_frames(&mut self) -> Vec<frame::Video> {
        let mut v = Vec::new();
        loop {
            let mut f = frame::Video::empty();
            if self
                .graph
                .get("out")
                .expect("added in new")
                .sink()
                .frame(&mut f)
                .is_err()
            {
                return v;
            }
            v.push(f);
        }
    }

    pub(super) fn drain(&mut self, clock: &mut Clock, outs: &mut Rungs) -> Result<(), MediaError> {
        for mut f in self.drain_frames() {
            encode_frame(&mut f, clock, outs)?;
        }
        Ok(())
    }
}
