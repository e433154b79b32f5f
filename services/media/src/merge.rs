//! Merge: one rung's encoded slices are concatenated with continuous timestamps and muxed with
//! the shared audio into (a) an MP4 with the index at the front and (b) HLS with CMAF fMP4
//! segments of about 2 s, each starting on a keyframe. One pass writes both.

use std::path::{Path, PathBuf};

use ffmpeg_next::{Dictionary, Packet, Rational, Rescale, codec, format, media};
use serde::{Deserialize, Serialize};
use vtx_domain::hls::MediaPlaylist;

use crate::encoder::{VideoCodec, codec_string};
use crate::probe::open_input;
use crate::{Deadline, MediaError};

use crate::remux::{Adts, extradata_of, set_extradata, strip_adts};
pub use crate::remux::{prefetch_bytes, remux_hls_to_mp4};

/// One encoded slice and where it sits on the output timeline.
#[derive(Clone, Debug)]
pub struct EncodedSlice {
    pub path: PathBuf,
    /// Start of the slice relative to the first slice, in `offset_tb`.
    pub offset: i64,
    pub offset_tb: (i32, i32),
}

#[derive(Clone, Debug)]
pub struct MergeRequest {
    pub slices: Vec<EncodedSlice>,
    /// AAC audio for the whole video (from `encode_audio`), if any.
    pub audio: Option<PathBuf>,
    /// Added to the audio's timestamps, in the first slice's `offset_tb` (the lead of audio
    /// that starts before the video, which the slices' offsets carry too).
    pub audio_offset: i64,
    pub codec: VideoCodec,
    /// Nominal frame rate: packets read back without a duration get one frame's worth, or the
    /// MP4's edit list would end at the last frame's start and hide it.
    pub frame_rate: (i32, i32),
    pub mp4: PathBuf,
    /// Directory for this rung's HLS playlist (`index.m3u8`), init segment and media segments.
    pub hls_dir: Option<PathBuf>,
    pub segment_seconds: f64,
    /// Keep the inputs' clock in the HLS segments (`tfdt` is the packets' own time, not time
    /// from the first packet), so segments muxed apart (one upload chunk at a time) play on as
    /// one stream. The MP4 starts at zero either way.
    pub keep_timestamps: bool,
    pub deadline: Deadline,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeReport {
    pub frames: u64,
    pub duration_seconds: f64,
    pub mp4_bytes: u64,
    pub codec_string: String,
    /// Bytes of the MP4 a player needs to show its first 3 seconds (header + media data).
    pub prefetch_bytes_3s: u64,
}

/// Merges one rung. On error the MP4 and the HLS directory are removed.
pub fn merge_rendition(req: &MergeRequest) -> Result<MergeReport, MediaError> {
    crate::init();
    let result = merge_inner(req);
    if result.is_err() {
        let _ = std::fs::remove_file(&req.mp4);
        if let Some(d) = &req.hls_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    result
}

/// Reads one input's packets of one stream, offset onto the output timeline.
struct Source {
    ictx: format::context::Input,
    stream: usize,
    tb: Rational,
    offset: i64,
}

impl Source {
    fn open(
        path: &Path,
        kind: media::Type,
        offset: i64,
        offset_tb: Rational,
    ) -> Result<Self, MediaError> {
        let ictx = open_input(path)?;
        let s = ictx.streams().best(kind).ok_or_else(|| {
            MediaError::CorruptStream(format!("{} lacks a {kind:?} stream", path.display()))
        })?;
        let (stream, tb) = (s.index(), s.time_base());
        Ok(Self {
            ictx,
            stream,
            tb,
            offset: offset.rescale(offset_tb, tb),
        })
    }

    fn next(&mut self) -> Result<Option<Packet>, MediaError> {
        let mut p = Packet::empty();
        while crate::probe::next_packet(&mut self.ictx, &mut p)? {
            if p.stream() == self.stream {
                p.set_pts(p.pts().map(|t| t + self.offset));
                p.set_dts(p.dts().map(|t| t + self.offset));
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// All slices of a rung, read back to back.
struct VideoTrack {
    slices: std::vec::IntoIter<EncodedSlice>,
    current: Option<Source>,
    tb: Rational,
    last_dts: Option<i64>,
    frame_ticks: i64,
    /// The packet read ahead, whose decode time gives the one before it its duration.
    ahead: Option<Packet>,
}

impl VideoTrack {
    /// The next packet, lasting until the next one's decode time: what an MP4's sample table
    /// and each CMAF fragment's last sample must say for a variable frame rate (an encoder's
    /// nominal duration would leave a gap before the next fragment, or overlap it).
    fn next(&mut self) -> Result<Option<Packet>, MediaError> {
        if self.ahead.is_none() {
            self.ahead = self.next_raw()?;
        }
        let Some(mut p) = self.ahead.take() else {
            return Ok(None);
        };
        self.ahead = self.next_raw()?;
        if let (Some(dts), Some(next)) = (p.dts(), self.ahead.as_ref().and_then(|n| n.dts()))
            && next > dts
        {
            p.set_duration(next - dts);
        }
        Ok(Some(p))
    }

    fn next_raw(&mut self) -> Result<Option<Packet>, MediaError> {
        loop {
            if self.current.is_none() {
                let Some(s) = self.slices.next() else {
                    return Ok(None);
                };
                let src = Source::open(
                    &s.path,
                    media::Type::Video,
                    s.offset,
                    Rational(s.offset_tb.0, s.offset_tb.1),
                )?;
                self.current = Some(src);
            }
            let src = self.current.as_mut().expect("set above");
            match src.next()? {
                Some(mut p) => {
                    let in_tb = src.tb;
                    p.rescale_ts(in_tb, self.tb);
                    if p.duration() <= 0 {
                        p.set_duration(self.frame_ticks);
                    }
                    // Keep decode times strictly increasing across slice joins.
                    if let (Some(dts), Some(last)) = (p.dts(), self.last_dts)
                        && dts <= last
                    {
                        p.set_dts(Some(last + 1));
                        if p.pts().is_some_and(|pts| pts < last + 1) {
                            p.set_pts(Some(last + 1));
                        }
                    }
                    self.last_dts = p.dts().or(self.last_dts);
                    return Ok(Some(p));
                }
                None => self.current = None,
            }
        }
    }
}

pub(crate) struct Sink {
    pub(crate) octx: format::context::Output,
    pub(crate) video: (usize, Rational),
    pub(crate) audio: Option<(usize, Rational)>,
}

impl Sink {
    pub(crate) fn open(
        path: &Path,
        format_name: &str,
        vpar: &codec::Parameters,
        vtb: Rational,
        apar: Option<(&codec::Parameters, Rational)>,
        options: Dictionary,
        hevc: bool,
    ) -> Result<Self, MediaError> {
        let mut octx = format::output_as(path, format_name)
            .map_err(MediaError::ffmpeg("creating a merged output"))?;
        let v = {
            let mut ost = octx
                .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
                .map_err(MediaError::ffmpeg("adding the video stream"))?;
            ost.set_parameters(vpar.clone());
            ost.set_time_base(vtb);
            let tag = if hevc {
                u32::from_le_bytes(*b"hvc1")
            } else {
                0
            };
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = tag };
            ost.index()
        };
        let a = match apar {
            Some((par, tb)) => {
                let mut ost = octx
                    .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
                    .map_err(MediaError::ffmpeg("adding the audio stream"))?;
                ost.set_parameters(par.clone());
                ost.set_time_base(tb);
                unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
                Some(ost.index())
            }
            None => None,
        };
        octx.write_header_with(options)
            .map_err(MediaError::ffmpeg("writing a merged header"))?;
        let video = (v, octx.stream(v).expect("added").time_base());
        let audio = a.map(|i| (i, octx.stream(i).expect("added").time_base()));
        Ok(Self { octx, video, audio })
    }

    pub(crate) fn write(
        &mut self,
        pkt: &Packet,
        from_tb: Rational,
        is_video: bool,
    ) -> Result<(), MediaError> {
        let (idx, tb) = if is_video {
            self.video
        } else {
            match self.audio {
                Some(a) => a,
                None => return Ok(()),
            }
        };
        let mut p = pkt.clone();
        p.set_stream(idx);
        p.set_position(-1);
        p.rescale_ts(from_tb, tb);
        p.write_interleaved(&mut self.octx)
            .map_err(MediaError::ffmpeg("writing merged media"))
    }
}

fn merge_inner(req: &MergeRequest) -> Result<MergeReport, MediaError> {
    let first = req
        .slices
        .first()
        .ok_or_else(|| MediaError::CorruptStream("nothing to merge".into()))?;
    let (vpar, vtb) = {
        let ictx = open_input(&first.path)?;
        let s = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or(MediaError::NoVideoStream)?;
        (s.parameters(), s.time_base())
    };
    let extradata = extradata_of(&vpar);
    let mut audio = match &req.audio {
        Some(path) => Some(Source::open(
            path,
            media::Type::Audio,
            req.audio_offset,
            Rational(first.offset_tb.0, first.offset_tb.1),
        )?),
        None => None,
    };
    let mut next_a = match audio.as_mut() {
        Some(a) => a.next()?,
        None => None,
    };
    // AAC from MPEG-TS comes in ADTS frames: MP4 wants raw frames and the AudioSpecificConfig
    // (the HLS muxer, unlike the MP4 one, does not convert by itself).
    let adts = next_a.as_ref().and_then(|p| p.data()).and_then(Adts::parse);
    let apar = audio.as_ref().map(|a| {
        let s = a.ictx.stream(a.stream).expect("opened");
        let mut par = s.parameters();
        if let Some(h) = adts {
            set_extradata(&mut par, &h.audio_specific_config());
        }
        (par, a.tb)
    });
    let hevc = req.codec == VideoCodec::Hevc;

    let mut mp4_opts = Dictionary::new();
    mp4_opts.set("movflags", "+faststart");
    let mut sinks = vec![Sink::open(
        &req.mp4,
        "mp4",
        &vpar,
        vtb,
        apar.as_ref().map(|(p, tb)| (p, *tb)),
        mp4_opts,
        hevc,
    )?];
    if let Some(dir) = &req.hls_dir {
        std::fs::create_dir_all(dir)?;
        let mut o = Dictionary::new();
        o.set("hls_time", &format!("{}", req.segment_seconds));
        o.set("hls_playlist_type", "vod");
        o.set("hls_segment_type", "fmp4");
        o.set("hls_fmp4_init_filename", "init.mp4");
        o.set(
            "hls_segment_filename",
            &dir.join("seg-%05d.m4s").to_string_lossy(),
        );
        o.set("hls_flags", "independent_segments");
        if req.keep_timestamps {
            // No sidx: with frag_discont FFmpeg 5.1 writes its earliest presentation time off by
            // the init segment's edit list, and demuxers that trust it misplace each segment's
            // first frame (players place samples by tfdt and composition offsets).
            o.set("hls_segment_options", "movflags=+frag_discont+skip_sidx");
        }
        o.set("hls_list_size", "0");
        sinks.push(Sink::open(
            &dir.join("index.m3u8"),
            "hls",
            &vpar,
            vtb,
            apar.as_ref().map(|(p, tb)| (p, *tb)),
            o,
            hevc,
        )?);
    }

    let mut video = VideoTrack {
        slices: req.slices.clone().into_iter(),
        current: None,
        tb: vtb,
        last_dts: None,
        ahead: None,
        frame_ticks: 1i64
            .rescale(Rational(req.frame_rate.1, req.frame_rate.0), vtb)
            .max(1),
    };
    let mut next_v = video.next()?;
    let mut span = VideoSpan::default();
    let a_tb = audio.as_ref().map(|a| a.tb).unwrap_or(Rational(1, 1));
    loop {
        req.deadline.check()?;
        // Interleave by decode time.
        let take_video = match (&next_v, &next_a) {
            (Some(v), Some(a)) => {
                let (vd, ad) = (
                    v.dts().or(v.pts()).unwrap_or(0),
                    a.dts().or(a.pts()).unwrap_or(0),
                );
                vd.rescale(vtb, Rational(1, 1_000_000)) <= ad.rescale(a_tb, Rational(1, 1_000_000))
            }
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_video {
            let p = next_v.take().expect("checked");
            span.add(&p);
            for s in sinks.iter_mut() {
                s.write(&p, vtb, true)?;
            }
            next_v = video.next()?;
        } else {
            let mut p = next_a.take().expect("checked");
            if adts.is_some() {
                p = strip_adts(&p);
            }
            for s in sinks.iter_mut() {
                s.write(&p, a_tb, false)?;
            }
            next_a = audio.as_mut().expect("audio packet implies audio").next()?;
        }
    }
    for s in sinks.iter_mut() {
        s.octx
            .write_trailer()
            .map_err(MediaError::ffmpeg("finishing a merged output"))?;
    }
    if let Some(dir) = &req.hls_dir {
        let seconds = (span.end_pts - span.first_pts.unwrap_or(0)) as f64 * f64::from(vtb);
        fix_last_extinf(&dir.join("index.m3u8"), seconds)?;
    }
    span.report(&req.mp4, vtb, req.codec, &extradata)
}

/// FFmpeg's HLS muxer ends the last segment at the last video packet it wrote, in decode order:
/// with B-frames that is before the last frame shown, and without that frame's duration (a whole
/// second short at a low variable rate). The segments' durations must add up to the video's
/// length (`seconds`), so the last `EXTINF` is set to what the others leave.
fn fix_last_extinf(playlist: &Path, seconds: f64) -> Result<(), MediaError> {
    let text = std::fs::read_to_string(playlist)?;
    let durations: Vec<f64> = MediaPlaylist::parse(&text)
        .segments
        .iter()
        .filter_map(|s| s.seconds)
        .collect();
    let Some((_, before)) = durations.split_last() else {
        return Ok(());
    };
    let last = (seconds - before.iter().sum::<f64>()).max(0.001);
    let n = durations.len();
    let mut seen = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            let target = t.trim().parse::<u64>().unwrap_or(0).max(last.ceil() as u64);
            out.push_str(&format!("#EXT-X-TARGETDURATION:{target}\n"));
            continue;
        }
        if line.starts_with("#EXTINF:") {
            seen += 1;
            if seen == n {
                out.push_str(&format!("#EXTINF:{last:.6},\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(playlist, out)?;
    Ok(())
}

/// The video packets written to an output: how many, and the time they span (from the first
/// frame shown to the last one's end: the last packet's duration after the latest time, since a
/// packet's duration runs to the next decode time, not the next frame shown).
#[derive(Default)]
pub(crate) struct VideoSpan {
    pub(crate) frames: u64,
    pub(crate) first_pts: Option<i64>,
    pub(crate) last_pts: i64,
    pub(crate) end_pts: i64,
}

impl VideoSpan {
    pub(crate) fn add(&mut self, p: &Packet) {
        self.frames += 1;
        if let Some(pts) = p.pts() {
            self.first_pts = Some(self.first_pts.map_or(pts, |f| f.min(pts)));
            self.last_pts = if self.frames == 1 {
                pts
            } else {
                self.last_pts.max(pts)
            };
            self.end_pts = self.last_pts + p.duration().max(0);
        }
    }

    /// The report of the finished MP4 at `mp4`, whose video was written in `tb`.
    pub(crate) fn report(
        &self,
        mp4: &Path,
        tb: Rational,
        codec: VideoCodec,
        extradata: &[u8],
    ) -> Result<MergeReport, MediaError> {
        let ticks = self.end_pts - self.first_pts.unwrap_or(0);
        Ok(MergeReport {
            frames: self.frames,
            duration_seconds: ticks as f64 * f64::from(tb.numerator())
                / f64::from(tb.denominator()),
            mp4_bytes: std::fs::metadata(mp4)?.len(),
            codec_string: codec_string(codec, extradata),
            prefetch_bytes_3s: prefetch_bytes(mp4, 3.0)?,
        })
    }
}
