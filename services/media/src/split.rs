//! Split: the video track is cut into slice files at keyframes by remuxing (no decode, no
//! re-encode). Slice `c` holds the packets from its keyframe up to the next slice's keyframe in
//! decode order, plus that next keyframe and any frames that follow it in decode order but are
//! shown before it (leading frames of an open GOP), so every frame in the slice's presentation
//! window can be decoded from the slice alone. The transcoder keeps exactly the frames inside the
//! window, so each frame is encoded once across all slices.
//!
//! Timestamps in a slice file start at the slice's keyframe (its window start becomes 0).

use std::path::{Path, PathBuf};

use ffmpeg_next::{Packet, Rational, codec, format, media};
use serde::{Deserialize, Serialize};
use vtx_domain::SliceWindow;

use crate::probe::{Probe, next_packet, open_input};
use crate::{Deadline, MediaError};

/// One slice on disk. `window` is in the source stream's time base; the file's timestamps are
/// shifted by `-window.start`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SliceFile {
    pub window: SliceWindow,
    pub path: PathBuf,
    /// Time base of the file's video stream as written.
    pub packets: u64,
}

struct Writer {
    octx: format::context::Output,
    ost_tb: Rational,
    shift: i64,
    packets: u64,
    path: PathBuf,
    window: SliceWindow,
    /// The last decode time written (output time base).
    last_dts: Option<i64>,
}

impl Writer {
    fn open(
        path: &Path,
        window: SliceWindow,
        par: &codec::Parameters,
        in_tb: Rational,
    ) -> Result<Self, MediaError> {
        let mut octx =
            format::output_as(path, "mp4").map_err(MediaError::ffmpeg("creating a slice file"))?;
        {
            let mut ost = octx
                .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
                .map_err(MediaError::ffmpeg("adding the slice stream"))?;
            ost.set_parameters(par.clone());
            ost.set_time_base(in_tb);
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
        }
        octx.write_header()
            .map_err(MediaError::ffmpeg("writing a slice header"))?;
        let ost_tb = octx.stream(0).expect("stream just added").time_base();
        Ok(Self {
            octx,
            ost_tb,
            shift: window.start,
            packets: 0,
            path: path.to_path_buf(),
            window,
            last_dts: None,
        })
    }

    fn write(&mut self, pkt: &Packet, in_tb: Rational) -> Result<(), MediaError> {
        let mut p = pkt.clone();
        p.set_pts(pkt.pts().map(|t| t - self.shift));
        p.set_dts(pkt.dts().map(|t| t - self.shift));
        p.set_stream(0);
        p.set_position(-1);
        p.rescale_ts(in_tb, self.ost_tb);
        // Damaged input may carry decode times that go back, or presentation times before
        // them, which the MP4 muxer refuses: as the `ffmpeg` command line does, decode times
        // are moved on by a tick and a frame is never shown before it is decoded.
        if let (Some(dts), Some(last)) = (p.dts(), self.last_dts)
            && dts <= last
        {
            p.set_dts(Some(last + 1));
        }
        if let (Some(pts), Some(dts)) = (p.pts(), p.dts())
            && pts < dts
        {
            p.set_pts(Some(dts));
        }
        self.last_dts = p.dts().or(self.last_dts);
        p.write(&mut self.octx)
            .map_err(MediaError::ffmpeg("writing a slice"))?;
        self.packets += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<SliceFile, MediaError> {
        self.octx
            .write_trailer()
            .map_err(MediaError::ffmpeg("finishing a slice"))?;
        Ok(SliceFile {
            window: self.window,
            path: self.path,
            packets: self.packets,
        })
    }
}

/// Cuts the video stream of `input` into one file per window under `dir`
/// (`slice-00000.mp4`, ...). On error no slice file is left behind.
pub fn split_video(
    input: &Path,
    probe: &Probe,
    windows: &[SliceWindow],
    dir: &Path,
    deadline: Deadline,
) -> Result<Vec<SliceFile>, MediaError> {
    crate::init();
    let paths: Vec<PathBuf> = windows
        .iter()
        .map(|w| dir.join(format!("slice-{:05}.mp4", w.index)))
        .collect();
    let result = split_inner(input, probe, windows, &paths, deadline);
    if result.is_err() {
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn split_inner(
    input: &Path,
    probe: &Probe,
    windows: &[SliceWindow],
    paths: &[PathBuf],
    deadline: Deadline,
) -> Result<Vec<SliceFile>, MediaError> {
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let mut ictx = open_input(input)?;
    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = vstream.index();
    let in_tb = vstream.time_base();
    let par = vstream.parameters();
    // Decode-order start of each slice: its keyframe's dts.
    let start_dts: Vec<i64> = windows
        .iter()
        .map(|w| {
            probe
                .video
                .keyframes
                .iter()
                .find(|k| k.pts == w.start)
                .map(|k| k.dts)
                .ok_or_else(|| {
                    MediaError::CorruptStream(format!("no keyframe at slice start {}", w.start))
                })
        })
        .collect::<Result<_, _>>()?;

    let mut done = Vec::with_capacity(windows.len());
    // `prev` still takes the next slice's keyframe and leading frames.
    let mut prev: Option<Writer> = None;
    let mut cur = Writer::open(&paths[0], windows[0], &par, in_tb)?;
    let mut c = 0usize;
    let mut packet = Packet::empty();
    loop {
        deadline.check()?;
        if !next_packet(&mut ictx, &mut packet)? {
            break;
        }
        if packet.stream() != v_index {
            continue;
        }
        let dts = packet.dts().or(packet.pts()).unwrap_or(i64::MIN);
        let pts = packet.pts().unwrap_or(dts);
        if packet.dts().is_none() && packet.pts().is_none() {
            continue;
        }
        // Packets before the first slice's keyframe (undecodable leading frames) are skipped.
        if dts < start_dts[0] && c == 0 {
            continue;
        }
        if c + 1 < windows.len() && dts >= start_dts[c + 1] {
            if let Some(p) = prev.take() {
                done.push(p.finish()?);
            }
            c += 1;
            let next = Writer::open(&paths[c], windows[c], &par, in_tb)?;
            prev = Some(std::mem::replace(&mut cur, next));
        }
        if let Some(p) = prev.as_mut() {
            let is_boundary_key = pts == windows[c].start && packet.is_key();
            if is_boundary_key || pts < windows[c].start {
                p.write(&packet, in_tb)?;
            } else if let Some(p) = prev.take() {
                done.push(p.finish()?);
            }
        }
        cur.write(&packet, in_tb)?;
    }
    if let Some(p) = prev.take() {
        done.push(p.finish()?);
    }
    done.push(cur.finish()?);
    if done.len() != windows.len() {
        return Err(MediaError::CorruptStream(format!(
            "expected {} slices, wrote {}",
            windows.len(),
            done.len()
        )));
    }
    Ok(done)
}
