//! Opening untrusted input under limits: the container, decoder and codec allowlists, the
//! pixel limit on every decoder, and a per-packet size watch that reads each packet's picture
//! size with the codec's parser (no decoding).

use std::path::Path;

use ffmpeg_next::{Packet, codec, format};

use crate::MediaError;

/// Containers vtx accepts. FFmpeg alone would open far more (a text file through its `tty`
/// demuxer, a still through `image2`), and every demuxer is attack surface for untrusted input.
pub const ACCEPTED_CONTAINERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi,flv,mpeg";

/// Video codecs vtx decodes; anything else is `unsupported-codec`.
pub(crate) const ACCEPTED_VIDEO_CODECS: [codec::Id; 10] = [
    codec::Id::H264,
    codec::Id::HEVC,
    codec::Id::VP8,
    codec::Id::VP9,
    codec::Id::AV1,
    codec::Id::MPEG4,
    codec::Id::MPEG2VIDEO,
    codec::Id::MPEG1VIDEO,
    codec::Id::H263,
    codec::Id::PRORES,
];

/// Decoders FFmpeg may open on untrusted input, by name: the accepted video codecs and the
/// audio codecs cameras and phones write. Reading a file's stream parameters decodes its first
/// frames; nothing else is ever opened.
pub(crate) const ACCEPTED_DECODERS: &str = "h264,hevc,vp8,vp9,libdav1d,libaom-av1,av1,mpeg4,\
     mpeg2video,mpeg1video,h263,prores,aac,aac_fixed,mp3,mp3float,mp2,mp2float,ac3,ac3_fixed,\
     eac3,opus,libopus,vorbis,libvorbis,flac,alac,amrnb,amrwb,pcm_s16le,pcm_s16be,pcm_s24le,\
     pcm_s24be,pcm_s32le,pcm_f32le,pcm_u8,pcm_alaw,pcm_mulaw";

/// Opens untrusted input with only the accepted demuxers and decoders enabled, and no decoder
/// allowed to make a picture over [`crate::MAX_PIXELS`] while the streams are probed.
pub(crate) fn open_input(path: &Path) -> Result<format::context::Input, MediaError> {
    let mut opts = ffmpeg_next::Dictionary::new();
    opts.set("format_whitelist", ACCEPTED_CONTAINERS);
    opts.set("codec_whitelist", ACCEPTED_DECODERS);
    // Presentation times the container leaves out (AVI stores none for frames that B-frames
    // follow) are derived from the decode order, as `-fflags +genpts` does; a packet that has
    // one keeps it.
    opts.set("fflags", "+genpts");
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| MediaError::NotAVideo)?;
    // SAFETY: what `format::input_with_dictionary` does, plus per-stream decoder options for
    // `avformat_find_stream_info` (ffmpeg-next passes none): every pointer is checked, every
    // dictionary freed, and the context closed on failure.
    unsafe {
        use ffmpeg_next::ffi;
        let mut ps = std::ptr::null_mut();
        let mut raw = opts.disown();
        let res = ffi::avformat_open_input(&mut ps, path.as_ptr(), std::ptr::null(), &mut raw);
        ffi::av_dict_free(&mut raw);
        if res < 0 {
            return Err(MediaError::NotAVideo);
        }
        let n = (*ps).nb_streams as usize;
        let max_pixels = std::ffi::CString::new(crate::MAX_PIXELS.to_string()).expect("digits");
        let mut per_stream: Vec<*mut ffi::AVDictionary> = (0..n)
            .map(|_| {
                let mut d = std::ptr::null_mut();
                ffi::av_dict_set(&mut d, c"max_pixels".as_ptr(), max_pixels.as_ptr(), 0);
                d
            })
            .collect();
        let res = ffi::avformat_find_stream_info(
            ps,
            if n == 0 {
                std::ptr::null_mut()
            } else {
                per_stream.as_mut_ptr()
            },
        );
        for d in per_stream.iter_mut() {
            ffi::av_dict_free(d);
        }
        if res < 0 {
            ffi::avformat_close_input(&mut ps);
            return Err(MediaError::NotAVideo);
        }
        Ok(format::context::Input::wrap(ps))
    }
}

/// Limits a decoder before it is opened: only [`ACCEPTED_DECODERS`] open at all, and no picture
/// over [`crate::MAX_PIXELS`] is allocated (a stream may switch to a huge size after its first
/// frames).
pub(crate) fn limit_decoder(ctx: &mut codec::context::Context) {
    // SAFETY: fields of a context not yet opened; the whitelist string is FFmpeg's own copy
    // (av_strdup), which the context frees.
    unsafe {
        let c = ctx.as_mut_ptr();
        (*c).max_pixels = crate::MAX_PIXELS as i64;
        let list = std::ffi::CString::new(ACCEPTED_DECODERS).expect("no NUL");
        ffmpeg_next::ffi::av_freep(std::ptr::addr_of_mut!((*c).codec_whitelist).cast());
        (*c).codec_whitelist = ffmpeg_next::ffi::av_strdup(list.as_ptr());
    }
}

/// Reads each video packet's picture size from its headers with the codec's parser (no
/// decoding), so that a stream switching to a huge size after its first frames (a decode bomb)
/// is refused before any decoder sees it.
pub(crate) struct SizeWatch {
    parser: *mut ffmpeg_next::ffi::AVCodecParserContext,
    ctx: codec::context::Context,
}

impl SizeWatch {
    /// `None` for a codec FFmpeg has no parser for (the decoders' own limit still holds).
    pub(crate) fn new(params: codec::Parameters) -> Option<Self> {
        let id = ffmpeg_next::ffi::AVCodecID::from(params.id());
        let ctx = codec::context::Context::from_parameters(params).ok()?;
        // SAFETY: av_parser_init returns a new parser or null.
        let parser = unsafe { ffmpeg_next::ffi::av_parser_init(id as i32) };
        if parser.is_null() {
            return None;
        }
        // SAFETY: a field of the parser just made; packets are whole frames.
        unsafe { (*parser).flags |= ffmpeg_next::ffi::PARSER_FLAG_COMPLETE_FRAMES };
        Some(Self { parser, ctx })
    }

    /// The picture size this packet's headers give, if they give one.
    pub(crate) fn size(&mut self, p: &Packet) -> Option<(u32, u32)> {
        let data = p.data()?;
        let len = i32::try_from(data.len()).ok()?;
        let (mut out, mut out_len) = (std::ptr::null_mut(), 0);
        // SAFETY: the parser and context are live; the input is the packet's own buffer, which
        // FFmpeg pads; the output points into the parser's state and is not kept.
        unsafe {
            ffmpeg_next::ffi::av_parser_parse2(
                self.parser,
                self.ctx.as_mut_ptr(),
                &mut out,
                &mut out_len,
                data.as_ptr(),
                len,
                ffmpeg_next::ffi::AV_NOPTS_VALUE,
                ffmpeg_next::ffi::AV_NOPTS_VALUE,
                0,
            );
            let (p, c) = (&*self.parser, &*self.ctx.as_ptr());
            let w = p.width.max(p.coded_width).max(c.width).max(c.coded_width);
            let h = p
                .height
                .max(p.coded_height)
                .max(c.height)
                .max(c.coded_height);
            (w > 0 && h > 0).then_some((w as u32, h as u32))
        }
    }
}

impl Drop for SizeWatch {
    fn drop(&mut self) {
        // SAFETY: the parser was made by av_parser_init and is closed once.
        unsafe { ffmpeg_next::ffi::av_parser_close(self.parser) };
    }
}
