//! Ladder transcode: the source is decoded once; every decoded frame goes to one scaler and
//! encoder per rung. Audio is decoded and encoded to AAC once, and the same packets are muxed into
//! every output. Outputs are MP4 with the index at the front.

use std::path::PathBuf;

use ffmpeg_next::{
    Dictionary, Packet, Rational, codec, encoder, filter, format, frame, media, picture,
    software::scaling, threading,
};
use serde::{Deserialize, Serialize};
use vtx_domain::Rung;

use crate::probe::rational_to_f64;
use crate::{Deadline, MediaError};

/// Encoder effort. More tiers (high, extreme) come with the media engine issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// x264 veryfast: publish quickly.
    Fast,
}

impl Preset {
    fn x264_preset(self) -> &'static str {
        match self {
            Preset::Fast => "veryfast",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RenditionOutput {
    pub rung: Rung,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct TranscodeRequest {
    pub input: PathBuf,
    pub outputs: Vec<RenditionOutput>,
    pub preset: Preset,
    /// Keyframe interval; the same on every rung so that renditions stay switchable.
    pub gop_seconds: f64,
    pub deadline: Deadline,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenditionReport {
    pub name: String,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub duration_seconds: f64,
    pub bytes: u64,
    /// Whole-file bitrate, bits per second.
    pub bitrate: u64,
    pub has_audio: bool,
}

/// Runs the ladder transcode. On any error every output file is removed, so a failure never
/// leaves a half-written rendition behind.
pub fn transcode_ladder(req: &TranscodeRequest) -> Result<Vec<RenditionReport>, MediaError> {
    crate::init();
    let result = run(req);
    if result.is_err() {
        for o in &req.outputs {
            let _ = std::fs::remove_file(&o.path);
        }
    }
    result
}

fn run(req: &TranscodeRequest) -> Result<Vec<RenditionReport>, MediaError> {
    let mut ictx = crate::probe::open_input(&req.input)?;
    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or(MediaError::NoVideoStream)?;
    let v_index = vstream.index();
    let v_tb = vstream.time_base();
    let frame_rate = [vstream.avg_frame_rate(), vstream.rate()]
        .into_iter()
        .find(|r| rational_to_f64(*r).is_some_and(|f| (1.0..=240.0).contains(&f)))
        .unwrap_or(Rational(25, 1));
    let mut vctx = codec::context::Context::from_parameters(vstream.parameters())
        .map_err(MediaError::ffmpeg("reading video parameters"))?;
    vctx.set_threading(threading::Config {
        kind: threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let mut vdec = vctx
        .decoder()
        .video()
        .map_err(|e| MediaError::UnsupportedCodec(format!("video decoder: {e}")))?;

    let mut audio = match ictx.streams().best(media::Type::Audio) {
        Some(s) => Some(AudioPipe::new(&s)?),
        None => None,
    };

    let mut outs = req
        .outputs
        .iter()
        .map(|o| VideoOut::new(o, v_tb, frame_rate, req, audio.as_ref().map(|a| &a.encoder)))
        .collect::<Result<Vec<_>, _>>()?;

    let mut packet = Packet::empty();
    loop {
        req.deadline.check()?;
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => break,
            Err(e) => return Err(MediaError::CorruptStream(format!("reading packets: {e}"))),
        }
        if packet.stream() == v_index {
            vdec.send_packet(&packet)
                .map_err(|e| MediaError::CorruptStream(format!("decoding video: {e}")))?;
            drain_decoder(&mut vdec, &mut outs)?;
        } else if let Some(a) = audio.as_mut().filter(|a| a.stream_index == packet.stream()) {
            a.push_packet(&packet, &mut outs)?;
        }
    }
    vdec.send_eof()
        .map_err(MediaError::ffmpeg("flushing the video decoder"))?;
    drain_decoder(&mut vdec, &mut outs)?;
    if let Some(a) = audio.as_mut() {
        a.finish(&mut outs)?;
    }
    let has_audio = audio.is_some();
    outs.into_iter().map(|o| o.finish(has_audio)).collect()
}

fn drain_decoder(
    dec: &mut ffmpeg_next::decoder::Video,
    outs: &mut [VideoOut],
) -> Result<(), MediaError> {
    let mut decoded = frame::Video::empty();
    loop {
        match dec.receive_frame(&mut decoded) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => return Ok(()),
            Err(ffmpeg_next::Error::Other { errno }) if errno == libc_eagain() => return Ok(()),
            Err(e) => return Err(MediaError::CorruptStream(format!("decoding video: {e}"))),
        }
        let pts = decoded.timestamp();
        decoded.set_pts(pts);
        // libx264 would otherwise obey the source's frame types.
        decoded.set_kind(picture::Type::None);
        for out in outs.iter_mut() {
            out.push_frame(&decoded)?;
        }
    }
}

fn libc_eagain() -> i32 {
    ffmpeg_next::util::error::EAGAIN
}

/// One rung: scaler, H.264 encoder and MP4 muxer.
struct VideoOut {
    name: String,
    path: PathBuf,
    octx: format::context::Output,
    scaler: Option<scaling::Context>,
    encoder: encoder::Video,
    width: u32,
    height: u32,
    in_tb: Rational,
    enc_tb: Rational,
    last_pts: Option<i64>,
    v_ost: usize,
    v_ost_tb: Rational,
    a_ost: Option<(usize, Rational)>,
    frames: u64,
    first_pts: Option<i64>,
    end_pts: i64,
}

impl VideoOut {
    fn new(
        out: &RenditionOutput,
        v_tb: Rational,
        frame_rate: Rational,
        req: &TranscodeRequest,
        audio_encoder: Option<&encoder::Audio>,
    ) -> Result<Self, MediaError> {
        let mut octx = format::output_as(&out.path, "mp4")
            .map_err(MediaError::ffmpeg("creating the MP4 output"))?;
        let h264 = encoder::find_by_name("libx264")
            .ok_or_else(|| MediaError::UnsupportedCodec("libx264 encoder missing".into()))?;

        let mut enc = codec::context::Context::new_with_codec(h264)
            .encoder()
            .video()
            .map_err(MediaError::ffmpeg("creating the H.264 encoder"))?;
        let (width, height) = (out.rung.width, out.rung.height);
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_aspect_ratio(Rational(1, 1));
        // Encoder time base 1/fps, as the ffmpeg command line uses: with the stream's fine time
        // base instead, the MP4 ends up without per-sample durations.
        let enc_tb = frame_rate.invert();
        enc.set_time_base(enc_tb);
        enc.set_frame_rate(Some(frame_rate));
        let fps = rational_to_f64(frame_rate).expect("checked by the caller");
        let gop = (req.gop_seconds * fps).round().max(1.0) as u32;
        enc.set_gop(gop);
        enc.set_max_b_frames(2);
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let mut opts = Dictionary::new();
        opts.set("preset", req.preset.x264_preset());
        opts.set("profile", "high");
        opts.set("crf", "23");
        opts.set("maxrate", &out.rung.max_bitrate.to_string());
        opts.set("bufsize", &(out.rung.max_bitrate * 2).to_string());
        // Fixed, closed GOPs: keyframes line up across rungs.
        opts.set(
            "x264-params",
            &format!("keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"),
        );
        let encoder = enc
            .open_with(opts)
            .map_err(MediaError::ffmpeg("opening the H.264 encoder"))?;

        let v_ost = {
            let mut ost = octx
                .add_stream(h264)
                .map_err(MediaError::ffmpeg("adding the video stream"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(enc_tb);
            // Let the muxer pick the tag for MP4.
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.index()
        };
        let a_index = match audio_encoder {
            Some(aenc) => {
                let mut ost = octx
                    .add_stream(encoder::find(codec::Id::AAC))
                    .map_err(MediaError::ffmpeg("adding the audio stream"))?;
                ost.set_parameters(aenc);
                ost.set_time_base(Rational(1, aenc.rate() as i32));
                unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
                Some(ost.index())
            }
            None => None,
        };
        let mut mux_opts = Dictionary::new();
        mux_opts.set("movflags", "+faststart");
        octx.write_header_with(mux_opts)
            .map_err(MediaError::ffmpeg("writing the MP4 header"))?;
        let v_ost_tb = octx.stream(v_ost).expect("stream just added").time_base();
        let a_ost = a_index.map(|i| (i, octx.stream(i).expect("stream just added").time_base()));

        Ok(Self {
            name: out.rung.name.clone(),
            path: out.path.clone(),
            octx,
            scaler: None,
            encoder,
            width,
            height,
            in_tb: v_tb,
            enc_tb,
            last_pts: None,
            v_ost,
            v_ost_tb,
            a_ost,
            frames: 0,
            first_pts: None,
            end_pts: 0,
        })
    }

    fn push_frame(&mut self, input: &frame::Video) -> Result<(), MediaError> {
        let needs_new = match &self.scaler {
            Some(s) => {
                s.input().width != input.width()
                    || s.input().height != input.height()
                    || s.input().format != input.format()
            }
            None => true,
        };
        if needs_new {
            self.scaler = Some(
                scaling::Context::get(
                    input.format(),
                    input.width(),
                    input.height(),
                    format::Pixel::YUV420P,
                    self.width,
                    self.height,
                    scaling::Flags::BICUBIC,
                )
                .map_err(MediaError::ffmpeg("creating a scaler"))?,
            );
        }
        // A fresh frame each time: the encoder may still hold a reference to the previous one.
        let mut scaled = frame::Video::empty();
        self.scaler
            .as_mut()
            .expect("scaler set above")
            .run(input, &mut scaled)
            .map_err(MediaError::ffmpeg("scaling"))?;
        // Strictly increasing in the encoder's 1/fps time base, even for variable-rate input.
        let pts = input
            .pts()
            .map(|p| rescale(p, self.in_tb, self.enc_tb))
            .unwrap_or(0);
        let pts = self.last_pts.map_or(pts, |last| pts.max(last + 1));
        self.last_pts = Some(pts);
        scaled.set_pts(Some(pts));
        scaled.set_kind(picture::Type::None);
        self.encoder
            .send_frame(&scaled)
            .map_err(MediaError::ffmpeg("encoding video"))?;
        self.drain_encoder()
    }

    fn drain_encoder(&mut self) -> Result<(), MediaError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            // FFmpeg 5.1's libx264 leaves durations at 0, and the MP4 muxer then drops the
            // last frame's duration: set it before rescaling.
            if pkt.duration() <= 0 {
                pkt.set_duration(1);
            }
            if let Some(pts) = pkt.pts() {
                self.first_pts = Some(self.first_pts.map_or(pts, |f| f.min(pts)));
                self.end_pts = self.end_pts.max(pts + pkt.duration());
            }
            pkt.set_stream(self.v_ost);
            pkt.set_position(-1);
            pkt.rescale_ts(self.enc_tb, self.v_ost_tb);
            pkt.write_interleaved(&mut self.octx)
                .map_err(MediaError::ffmpeg("writing video"))?;
            self.frames += 1;
        }
        Ok(())
    }

    fn write_audio(&mut self, pkt: &Packet, enc_tb: Rational) -> Result<(), MediaError> {
        let Some((idx, tb)) = self.a_ost else {
            return Ok(());
        };
        let mut p = pkt.clone();
        p.set_stream(idx);
        p.set_position(-1);
        p.rescale_ts(enc_tb, tb);
        p.write_interleaved(&mut self.octx)
            .map_err(MediaError::ffmpeg("writing audio"))
    }

    fn finish(mut self, has_audio: bool) -> Result<RenditionReport, MediaError> {
        self.encoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the encoder"))?;
        self.drain_encoder()?;
        self.octx
            .write_trailer()
            .map_err(MediaError::ffmpeg("writing the MP4 trailer"))?;
        let bytes = std::fs::metadata(&self.path)?.len();
        let ticks = self.end_pts - self.first_pts.unwrap_or(0);
        let duration_seconds = ticks as f64 * f64::from(self.enc_tb.numerator())
            / f64::from(self.enc_tb.denominator());
        let bitrate = if duration_seconds > 0.0 {
            (bytes as f64 * 8.0 / duration_seconds) as u64
        } else {
            0
        };
        Ok(RenditionReport {
            name: self.name,
            path: self.path,
            width: self.width,
            height: self.height,
            frames: self.frames,
            duration_seconds,
            bytes,
            bitrate,
            has_audio,
        })
    }
}

/// The audio track, decoded and encoded once (AAC), its packets shared by every output.
struct AudioPipe {
    stream_index: usize,
    decoder: ffmpeg_next::decoder::Audio,
    graph: filter::Graph,
    encoder: encoder::Audio,
    enc_tb: Rational,
    next_pts: Option<i64>,
}

impl AudioPipe {
    fn new(stream: &format::stream::Stream) -> Result<Self, MediaError> {
        let in_tb = stream.time_base();
        let ctx = codec::context::Context::from_parameters(stream.parameters())
            .map_err(MediaError::ffmpeg("reading audio parameters"))?;
        let decoder = ctx
            .decoder()
            .audio()
            .map_err(|e| MediaError::UnsupportedCodec(format!("audio decoder: {e}")))?;

        let aac = encoder::find(codec::Id::AAC)
            .ok_or_else(|| MediaError::UnsupportedCodec("AAC encoder missing".into()))?;
        let mut enc = codec::context::Context::new_with_codec(aac)
            .encoder()
            .audio()
            .map_err(MediaError::ffmpeg("creating the AAC encoder"))?;
        let rate = match decoder.rate() {
            r @ (44_100 | 48_000) => r,
            _ => 48_000,
        } as i32;
        let in_channels = decoder
            .channel_layout()
            .channels()
            .max(decoder.channels() as i32);
        let layout = if in_channels == 1 {
            ffmpeg_next::ChannelLayout::MONO
        } else {
            ffmpeg_next::ChannelLayout::STEREO
        };
        enc.set_rate(rate);
        enc.set_channel_layout(layout);
        enc.set_channels(layout.channels());
        enc.set_format(format::Sample::F32(format::sample::Type::Planar));
        enc.set_bit_rate(if layout.channels() == 1 {
            64_000
        } else {
            128_000
        });
        enc.set_time_base(Rational(1, rate));
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = enc
            .open_as(aac)
            .map_err(MediaError::ffmpeg("opening the AAC encoder"))?;

        let in_layout = if decoder.channel_layout().bits() == 0 {
            ffmpeg_next::ChannelLayout::default(i32::from(decoder.channels()))
        } else {
            decoder.channel_layout()
        };
        let mut graph = filter::Graph::new();
        let args = format!(
            "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
            in_tb.numerator(),
            in_tb.denominator(),
            decoder.rate(),
            decoder.format().name(),
            in_layout.bits()
        );
        let abuffer = filter::find("abuffer").expect("abuffer is built into libavfilter");
        let abuffersink =
            filter::find("abuffersink").expect("abuffersink is built into libavfilter");
        graph
            .add(&abuffer, "in", &args)
            .map_err(MediaError::ffmpeg("creating the audio source"))?;
        graph
            .add(&abuffersink, "out", "")
            .map_err(MediaError::ffmpeg("creating the audio sink"))?;
        {
            let mut out = graph.get("out").expect("added above");
            out.set_sample_format(encoder.format());
            out.set_channel_layout(encoder.channel_layout());
            out.set_sample_rate(encoder.rate());
        }
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse("anull"))
            .map_err(MediaError::ffmpeg("building the audio graph"))?;
        graph
            .validate()
            .map_err(MediaError::ffmpeg("validating the audio graph"))?;
        graph
            .get("out")
            .expect("added above")
            .sink()
            .set_frame_size(encoder.frame_size());

        Ok(Self {
            stream_index: stream.index(),
            decoder,
            graph,
            encoder,
            enc_tb: Rational(1, rate),
            next_pts: None,
        })
    }

    fn push_packet(&mut self, pkt: &Packet, outs: &mut [VideoOut]) -> Result<(), MediaError> {
        self.decoder
            .send_packet(pkt)
            .map_err(|e| MediaError::CorruptStream(format!("decoding audio: {e}")))?;
        self.drain_decoder(outs)
    }

    fn drain_decoder(&mut self, outs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut decoded = frame::Audio::empty();
        loop {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno }) if errno == libc_eagain() => return Ok(()),
                Err(e) => return Err(MediaError::CorruptStream(format!("decoding audio: {e}"))),
            }
            let ts = decoded.timestamp();
            decoded.set_pts(ts);
            self.graph
                .get("in")
                .expect("added in new")
                .source()
                .add(&decoded)
                .map_err(MediaError::ffmpeg("filtering audio"))?;
            self.drain_graph(outs)?;
        }
    }

    fn drain_graph(&mut self, outs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut filtered = frame::Audio::empty();
        loop {
            let mut sink = self.graph.get("out").expect("added in new");
            let sink_tb = sink.sink().time_base();
            if sink.sink().frame(&mut filtered).is_err() {
                return Ok(());
            }
            // Continuous timestamps in 1/rate, anchored at the first frame's position.
            let pts = match self.next_pts {
                Some(p) => p,
                None => filtered
                    .pts()
                    .map(|p| rescale(p, sink_tb, self.enc_tb))
                    .unwrap_or(0),
            };
            filtered.set_pts(Some(pts));
            self.next_pts = Some(pts + filtered.samples() as i64);
            self.encoder
                .send_frame(&filtered)
                .map_err(MediaError::ffmpeg("encoding audio"))?;
            self.drain_encoder(outs)?;
        }
    }

    fn drain_encoder(&mut self, outs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            for out in outs.iter_mut() {
                out.write_audio(&pkt, self.enc_tb)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, outs: &mut [VideoOut]) -> Result<(), MediaError> {
        self.decoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the audio decoder"))?;
        self.drain_decoder(outs)?;
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .flush()
            .map_err(MediaError::ffmpeg("flushing the audio graph"))?;
        self.drain_graph(outs)?;
        self.encoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the AAC encoder"))?;
        self.drain_encoder(outs)
    }
}

fn rescale(v: i64, from: Rational, to: Rational) -> i64 {
    use ffmpeg_next::Rescale;
    v.rescale(from, to)
}
