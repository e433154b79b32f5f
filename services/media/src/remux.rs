//! Remuxing without re-encoding: an HLS rendition into an MP4, AAC out of ADTS, and how many
//! bytes an MP4 needs for its first seconds.

use std::path::Path;

use ffmpeg_next::{Dictionary, Packet, Rational, codec, format, media};

use crate::encoder::VideoCodec;
use crate::probe::open_input;
use crate::{Deadline, MediaError};

use crate::merge::*;

/// Remuxes an HLS rendition this engine packaged (a local media playlist with its init and
/// media segments, video and AAC audio) into one MP4 with the index at the front, stream copy.
/// Only our own output is opened this way: HLS is not among the containers accepted from
/// uploads. On error the MP4 is removed.
pub fn remux_hls_to_mp4(
    playlist: &Path,
    codec: VideoCodec,
    mp4: &Path,
    deadline: Deadline,
) -> Result<MergeReport, MediaError> {
    crate::init();
    let result = remux_inner(playlist, codec, mp4, deadline);
    if result.is_err() {
        let _ = std::fs::remove_file(mp4);
    }
    result
}

pub(crate) fn remux_inner(
    playlist: &Path,
    codec: VideoCodec,
    mp4: &Path,
    deadline: Deadline,
) -> Result<MergeReport, MediaError> {
    let mut opts = Dictionary::new();
    opts.set("format_whitelist", "hls,mov,mp4,m4a");
    opts.set("protocol_whitelist", "file");
    let mut ictx = format::input_with_dictionary(playlist, opts)
        .map_err(MediaError::ffmpeg("opening an HLS rendition"))?;
    let v = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let (vi, vtb, vpar) = (v.index(), v.time_base(), v.parameters());
    let audio = ictx
        .streams()
        .best(media::Type::Audio)
        .map(|a| (a.index(), a.time_base(), a.parameters()));
    let extradata = extradata_of(&vpar);
    let mut o = Dictionary::new();
    o.set("movflags", "+faststart");
    let mut sink = Sink::open(
        mp4,
        "mp4",
        &vpar,
        vtb,
        audio.as_ref().map(|(_, tb, par)| (par, *tb)),
        o,
        codec == VideoCodec::Hevc,
    )?;
    let mut span = VideoSpan::default();
    let mut p = Packet::empty();
    while crate::probe::next_packet(&mut ictx, &mut p)? {
        deadline.check()?;
        if p.stream() == vi {
            span.add(&p);
            sink.write(&p, vtb, true)?;
        } else if let Some((ai, atb, _)) = &audio
            && p.stream() == *ai
        {
            sink.write(&p, *atb, false)?;
        }
    }
    sink.octx
        .write_trailer()
        .map_err(MediaError::ffmpeg("finishing an MP4"))?;
    span.report(mp4, vtb, codec, &extradata)
}

/// A copy of a stream's codec extradata (`avcC`, `hvcC`, `av1C`), for its codec string.
pub(crate) fn extradata_of(par: &codec::Parameters) -> Vec<u8> {
    // SAFETY: the pointer and size come from the live parameters and are read only.
    unsafe {
        let p = par.as_ptr();
        if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts((*p).extradata, (*p).extradata_size as usize).to_vec()
        }
    }
}

/// The fixed part of an ADTS header: what the AudioSpecificConfig is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Adts {
    pub(crate) object_type: u8,
    pub(crate) frequency_index: u8,
    pub(crate) channels: u8,
}

impl Adts {
    pub(crate) fn parse(data: &[u8]) -> Option<Self> {
        if data.len() < 7 || data[0] != 0xFF || data[1] & 0xF6 != 0xF0 {
            return None;
        }
        let channels = ((data[2] & 0x01) << 2) | (data[3] >> 6);
        // Channel configuration 0 needs a program config element: not handled, left as it is.
        (channels != 0).then_some(Adts {
            object_type: (data[2] >> 6) + 1,
            frequency_index: (data[2] >> 2) & 0x0F,
            channels,
        })
    }

    pub(crate) fn audio_specific_config(&self) -> [u8; 2] {
        let v = (u16::from(self.object_type) << 11)
            | (u16::from(self.frequency_index) << 7)
            | (u16::from(self.channels) << 3);
        v.to_be_bytes()
    }
}

/// The packet without its ADTS header (7 bytes, 9 with a CRC).
pub(crate) fn strip_adts(p: &Packet) -> Packet {
    let data = p.data().unwrap_or_default();
    if Adts::parse(data).is_none() {
        return p.clone();
    }
    let header = if data[1] & 0x01 == 0 { 9 } else { 7 };
    let mut out = Packet::copy(&data[header.min(data.len())..]);
    out.set_pts(p.pts());
    out.set_dts(p.dts());
    out.set_duration(p.duration());
    out.set_stream(p.stream());
    out.set_flags(p.flags());
    out
}

pub(crate) fn set_extradata(par: &mut codec::Parameters, bytes: &[u8]) {
    // SAFETY: the parameters own their extradata; it is replaced by a buffer from av_malloc
    // with the padding FFmpeg requires, and the old one is freed.
    unsafe {
        let p = par.as_mut_ptr();
        ffmpeg_next::ffi::av_freep(std::ptr::addr_of_mut!((*p).extradata).cast());
        let pad = ffmpeg_next::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
        let buf = ffmpeg_next::ffi::av_mallocz(bytes.len() + pad).cast::<u8>();
        if buf.is_null() {
            (*p).extradata_size = 0;
            return;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        (*p).extradata = buf;
        (*p).extradata_size = bytes.len() as i32;
    }
}

/// Bytes of a faststart MP4 needed to play its first `seconds`: everything up to the end of the
/// last sample (of any stream) that starts before `seconds`, header included.
pub fn prefetch_bytes(mp4: &Path, seconds: f64) -> Result<u64, MediaError> {
    let mut ictx = open_input(mp4)?;
    let tbs: Vec<Rational> = ictx.streams().map(|s| s.time_base()).collect();
    let mut end = 0u64;
    let mut p = Packet::empty();
    while crate::probe::next_packet(&mut ictx, &mut p)? {
        let tb = tbs[p.stream()];
        let t = p.pts().or(p.dts()).unwrap_or(0) as f64 * f64::from(tb.numerator())
            / f64::from(tb.denominator());
        if t < seconds
            && let Ok(pos) = u64::try_from(p.position())
        {
            end = end.max(pos + p.size() as u64);
        }
    }
    Ok(end)
}
