//! The audio track, decoded and encoded to AAC once. Its packets go to every output that wants
//! them: each rung of a whole-file ladder, or one `audio.m4a` shared by all slices' merges.

use std::path::Path;

use ffmpeg_next::{Packet, Rational, Rescale, codec, encoder, filter, format, frame, media};

use crate::conceal::{DamagePolicy, MAX_ERRORS_IN_A_ROW};
use crate::probe::{next_packet, open_input};
use crate::{Deadline, MediaError};

/// Where encoded packets go: `(packet, its time base)`.
pub(crate) type Emit<'a> = dyn FnMut(&Packet, Rational) -> Result<(), MediaError> + 'a;

pub(crate) struct AudioPipe {
    stream_index: usize,
    decoder: ffmpeg_next::decoder::Audio,
    graph: filter::Graph,
    encoder: encoder::Audio,
    enc_tb: Rational,
    /// Input time (stream time base) that becomes output time 0.
    zero: i64,
    /// Output time (in `enc_tb`) where audio stops: the video's end, so both end together.
    end: Option<i64>,
    in_tb: Rational,
    next_pts: Option<i64>,
    /// Where the decoded audio should go on next (input time base): a decoded frame that starts
    /// later follows lost packets, whose time is filled with silence.
    next_in: Option<i64>,
    /// Decoded frames, and frames' worth of silence put in for lost ones (the longest run of
    /// them too, in seconds).
    decoded_frames: u64,
    concealed_frames: u64,
    longest_gap_seconds: f64,
    damage: DamagePolicy,
    /// Sample rate, format and channel count the filter graph was built for.
    input_shape: (u32, format::Sample, u16),
}

impl AudioPipe {
    /// `zero`: the input time, in this stream's time base, that output time 0 stands for (the
    /// video's first frame), so audio and video keep their offset. `end`: input time (same base)
    /// past which audio is cut, the video's end.
    pub(crate) fn new(
        stream: &format::stream::Stream,
        zero: i64,
        end: Option<i64>,
        damage: DamagePolicy,
    ) -> Result<Self, MediaError> {
        let in_tb = stream.time_base();
        let mut ctx = codec::context::Context::from_parameters(stream.parameters())
            .map_err(MediaError::ffmpeg("reading audio parameters"))?;
        crate::probe::limit_decoder(&mut ctx);
        let mut decoder = ctx.decoder();
        if matches!(
            stream.parameters().id(),
            codec::Id::AC3 | codec::Id::EAC3 | codec::Id::MP2 | codec::Id::MP3
        ) {
            // A frame that fails its CRC is refused rather than played as noise (or as the
            // previous block again): its time becomes silence, and it is counted.
            // SAFETY: a plain field of a context not yet opened.
            unsafe {
                (*decoder.as_mut_ptr()).err_recognition =
                    ffmpeg_next::ffi::AV_EF_CRCCHECK | ffmpeg_next::ffi::AV_EF_EXPLODE;
            }
        }
        // The decoder moves a frame's time past the samples it skips (priming) in this base.
        decoder.set_packet_time_base(in_tb);
        let decoder = decoder
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
        let layout = if decoder.channels() == 1 {
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
        let input_shape = (decoder.rate(), decoder.format(), decoder.channels());
        let args = format!(
            "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
            in_tb.numerator(),
            in_tb.denominator(),
            decoder.rate(),
            decoder.format().name(),
            in_layout.bits()
        );
        graph
            .add(
                &filter::find("abuffer").expect("abuffer filter"),
                "in",
                &args,
            )
            .map_err(MediaError::ffmpeg("creating the audio source"))?;
        graph
            .add(
                &filter::find("abuffersink").expect("abuffersink filter"),
                "out",
                "",
            )
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
            zero,
            end: end.map(|e| (e - zero).rescale(in_tb, Rational(1, rate))),
            in_tb,
            next_pts: None,
            next_in: None,
            decoded_frames: 0,
            concealed_frames: 0,
            longest_gap_seconds: 0.0,
            damage,
            input_shape,
        })
    }

    pub(crate) fn stream_index(&self) -> usize {
        self.stream_index
    }

    pub(crate) fn encoder(&self) -> &encoder::Audio {
        &self.encoder
    }

    pub(crate) fn push_packet(
        &mut self,
        pkt: &Packet,
        emit: &mut Emit<'_>,
    ) -> Result<(), MediaError> {
        // A packet the decoder refuses is lost: its time is filled with silence once the next
        // frame comes out (as the `ffmpeg` command line goes on past it).
        if let Err(e) = self.decoder.send_packet(pkt) {
            tracing::debug!(error = %e, "undecodable audio packet");
        }
        self.drain_decoder(emit)
    }

    /// Concealed audio frames, once the input is done; fails past the damage policy.
    pub(crate) fn concealed(&self) -> Result<u64, MediaError> {
        let frames = self.concealed_frames;
        let policy = &self.damage;
        policy
            .check_run("audio", frames, self.longest_gap_seconds)
            .map_err(MediaError::CorruptStream)?;
        policy
            .check_share("audio", frames, self.decoded_frames + frames)
            .map_err(MediaError::CorruptStream)?;
        Ok(frames)
    }

    fn drain_decoder(&mut self, emit: &mut Emit<'_>) -> Result<(), MediaError> {
        let mut decoded = frame::Audio::empty();
        let mut errors = 0;
        loop {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno })
                    if errno == ffmpeg_next::util::error::EAGAIN =>
                {
                    return Ok(());
                }
                // A frame that failed to decode: its time is filled once the next one comes.
                // Frames queued behind it are still read (a bounded number of errors in a row).
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable audio frame");
                    errors += 1;
                    if errors > MAX_ERRORS_IN_A_ROW {
                        return Ok(());
                    }
                    continue;
                }
            }
            errors = 0;
            // The frame's own time: the decoder moves it past samples it skipped (priming an
            // edit list hides, MP3's encoder delay), which the best-effort time does not.
            let ts = decoded.pts().or(decoded.timestamp());
            decoded.set_pts(ts);
            if decoded.samples() == 0 || decoded.rate() == 0 {
                continue;
            }
            // The graph takes what the stream declared; a frame that decodes to another rate,
            // sample format or channel count is damage (its time becomes silence).
            if (decoded.rate(), decoded.format(), decoded.channels()) != self.input_shape {
                tracing::debug!("audio frame of another shape than the stream's; concealed");
                continue;
            }
            self.decoded_frames += 1;
            let rate_tb = Rational(1, decoded.rate() as i32);
            if let (Some(t), Some(expected)) = (ts, self.next_in) {
                let gap = (t - expected).rescale(self.in_tb, rate_tb);
                // More than half a frame missing: lost packets. Their time is silence.
                if gap > decoded.samples() as i64 / 2 {
                    let seconds = gap as f64 / f64::from(decoded.rate());
                    let frames = (gap as u64).div_ceil(decoded.samples() as u64);
                    tracing::debug!(gap, t, expected, "audio gap filled with silence");
                    // A gap longer than the policy allows fails before any silence is made.
                    self.damage
                        .check_run("audio", frames, seconds)
                        .map_err(MediaError::CorruptStream)?;
                    self.concealed_frames += frames;
                    self.longest_gap_seconds = self.longest_gap_seconds.max(seconds);
                    for silence in silence_like(
                        &decoded,
                        gap as usize,
                        decoded.samples(),
                        expected,
                        self.in_tb,
                    )? {
                        self.filter(&silence, emit)?;
                    }
                }
            }
            if let Some(t) = ts {
                let end = t + (decoded.samples() as i64).rescale(rate_tb, self.in_tb);
                self.next_in = Some(self.next_in.map_or(end, |n| n.max(end)));
            }
            self.filter(&decoded, emit)?;
        }
    }

    fn filter(&mut self, f: &frame::Audio, emit: &mut Emit<'_>) -> Result<(), MediaError> {
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .add(f)
            .map_err(MediaError::ffmpeg("filtering audio"))?;
        self.drain_graph(emit)
    }

    fn drain_graph(&mut self, emit: &mut Emit<'_>) -> Result<(), MediaError> {
        let mut filtered = frame::Audio::empty();
        loop {
            let mut sink = self.graph.get("out").expect("added in new");
            let sink_tb = sink.sink().time_base();
            if sink.sink().frame(&mut filtered).is_err() {
                return Ok(());
            }
            // Continuous sample clock, anchored where the first frame sits relative to zero.
            let pts = match self.next_pts {
                Some(p) => p,
                None => {
                    let zero = self.zero.rescale(self.in_tb, self.enc_tb);
                    filtered
                        .pts()
                        .map(|p| p.rescale(sink_tb, self.enc_tb) - zero)
                        .unwrap_or(0)
                }
            };
            let mut samples = filtered.samples() as i64;
            if let Some(end) = self.end {
                if pts >= end {
                    continue;
                }
                if pts + samples > end {
                    // The last frame: keep only what lies before the video's end.
                    samples = end - pts;
                    unsafe { (*filtered.as_mut_ptr()).nb_samples = samples as i32 };
                }
            }
            filtered.set_pts(Some(pts));
            self.next_pts = Some(pts + samples);
            self.encoder
                .send_frame(&filtered)
                .map_err(MediaError::ffmpeg("encoding audio"))?;
            self.drain_encoder(emit)?;
        }
    }

    fn drain_encoder(&mut self, emit: &mut Emit<'_>) -> Result<(), MediaError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            emit(&pkt, self.enc_tb)?;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, emit: &mut Emit<'_>) -> Result<(), MediaError> {
        self.decoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the audio decoder"))?;
        self.drain_decoder(emit)?;
        self.graph
            .get("in")
            .expect("added in new")
            .source()
            .flush()
            .map_err(MediaError::ffmpeg("flushing the audio graph"))?;
        self.drain_graph(emit)?;
        self.encoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the AAC encoder"))?;
        self.drain_encoder(emit)
    }
}

/// Encodes the audio of `input` once to AAC in `out` (MP4), timed so that 0 is the input's
/// video time `video_zero` (in `video_tb`): audio and video keep the source's offset, and the
/// audio runs to its own end. Lost audio frames are concealed with silence (past `damage`, the input
/// is refused). Returns how many were concealed, or `None`, writing nothing, when there is no
/// audio.
pub fn encode_audio(
    input: &Path,
    out: &Path,
    video_zero: i64,
    video_tb: (i32, i32),
    damage: DamagePolicy,
    deadline: Deadline,
) -> Result<Option<u64>, MediaError> {
    crate::init();
    let result = encode_audio_inner(
        input,
        out,
        video_zero,
        Rational(video_tb.0, video_tb.1),
        damage,
        deadline,
    );
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

fn encode_audio_inner(
    input: &Path,
    out: &Path,
    video_zero: i64,
    video_tb: Rational,
    damage: DamagePolicy,
    deadline: Deadline,
) -> Result<Option<u64>, MediaError> {
    let mut ictx = open_input(input)?;
    let Some(stream) = ictx.streams().best(media::Type::Audio) else {
        return Ok(None);
    };
    let atb = stream.time_base();
    let mut pipe = AudioPipe::new(&stream, video_zero.rescale(video_tb, atb), None, damage)?;
    let mut octx =
        format::output_as(out, "mp4").map_err(MediaError::ffmpeg("creating the audio file"))?;
    {
        let mut ost = octx
            .add_stream(encoder::find(codec::Id::AAC))
            .map_err(MediaError::ffmpeg("adding the audio stream"))?;
        ost.set_parameters(pipe.encoder());
        ost.set_time_base(pipe.enc_tb);
        unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
    }
    octx.write_header()
        .map_err(MediaError::ffmpeg("writing the audio header"))?;
    let ost_tb = octx.stream(0).expect("added").time_base();
    let mut emit = |p: &Packet, tb: Rational| {
        let mut p = p.clone();
        p.set_stream(0);
        p.rescale_ts(tb, ost_tb);
        p.write_interleaved(&mut octx)
            .map_err(MediaError::ffmpeg("writing audio"))
    };
    let mut packet = Packet::empty();
    loop {
        deadline.check()?;
        if !next_packet(&mut ictx, &mut packet)? {
            break;
        }
        if packet.stream() == pipe.stream_index() {
            pipe.push_packet(&packet, &mut emit)?;
        }
    }
    pipe.finish(&mut emit)?;
    let concealed = pipe.concealed()?;
    octx.write_trailer()
        .map_err(MediaError::ffmpeg("finishing the audio file"))?;
    Ok(Some(concealed))
}

/// Silence in `like`'s format, `samples` long from `pts` (`like`'s time base), in frames of at
/// most `chunk` samples.
fn silence_like(
    like: &frame::Audio,
    samples: usize,
    chunk: usize,
    pts: i64,
    in_tb: Rational,
) -> Result<Vec<frame::Audio>, MediaError> {
    let channels = i32::from(like.channels().max(1));
    let layout = if like.channel_layout().bits() == 0 {
        ffmpeg_next::ChannelLayout::default(channels)
    } else {
        like.channel_layout()
    };
    let rate_tb = Rational(1, like.rate() as i32);
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < samples {
        let n = (samples - done).min(chunk.max(1));
        let mut f = frame::Audio::empty();
        // SAFETY: fields of a frame this function owns, set before its buffers are allocated;
        // the buffers are checked before they are written.
        unsafe {
            let p = f.as_mut_ptr();
            (*p).format = (*like.as_ptr()).format;
            (*p).nb_samples = n as i32;
            (*p).channel_layout = layout.bits();
            (*p).channels = channels;
            (*p).sample_rate = like.rate() as i32;
            let ret = ffmpeg_next::ffi::av_frame_get_buffer(p, 0);
            if ret < 0 || (*p).extended_data.is_null() {
                return Err(MediaError::ffmpeg("making silence")(
                    ffmpeg_next::Error::from(ret.min(-1)),
                ));
            }
            ffmpeg_next::ffi::av_samples_set_silence(
                (*p).extended_data,
                0,
                n as i32,
                channels,
                std::mem::transmute::<i32, ffmpeg_next::ffi::AVSampleFormat>((*p).format),
            );
        }
        f.set_pts(Some(pts + (done as i64).rescale(rate_tb, in_tb)));
        out.push(f);
        done += n;
    }
    Ok(out)
}
