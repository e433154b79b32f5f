//! One rung of the ladder: its scaler, encoder and MP4 muxer.

use std::path::PathBuf;

use ffmpeg_next::{Packet, Rational, Rescale, codec, encoder, format, frame, software::scaling};

use crate::MediaError;
use crate::conceal::Concealed;
use crate::encoder::{Tier, VideoCodec, codec_string, encoder_options};
use crate::hw::HwFrames;

use super::*;

/// One rung: scaler, encoder and MP4 muxer.
pub(super) struct VideoOut {
    pub(super) name: String,
    pub(super) codec: VideoCodec,
    pub(super) path: PathBuf,
    pub(super) octx: format::context::Output,
    pub(super) scaler: Option<scaling::Context>,
    /// What the scaler writes: the encoder's pixel format (or the device pool's upload format).
    pub(super) pixel_format: format::Pixel,
    pub(super) encoder: OpenEncoder,
    /// Device frame pool of a VAAPI/QSV encoder: scaled frames are uploaded into it.
    pub(super) hw: Option<HwFrames>,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) enc_tb: Rational,
    /// One frame in `enc_tb`, for packets the encoder leaves without a duration.
    pub(super) frame_ticks: i64,
    pub(super) last_pts: Option<i64>,
    pub(super) v_ost: usize,
    pub(super) v_ost_tb: Rational,
    pub(super) a_ost: Option<(usize, Rational)>,
    pub(super) frames: u64,
    pub(super) first_pts: Option<i64>,
    pub(super) end_pts: i64,
}

impl VideoOut {
    pub(super) fn new(
        out: &RenditionOutput,
        req: &TranscodeRequest,
        frame_rate: Rational,
        enc_tb: Rational,
        gop: u32,
        audio_encoder: Option<&encoder::Audio>,
    ) -> Result<Self, MediaError> {
        let mut octx = format::output_as(&out.path, "mp4")
            .map_err(MediaError::ffmpeg("creating the MP4 output"))?;
        let settings = EncoderSettings {
            width: out.rung.width,
            height: out.rung.height,
            enc_tb,
            frame_rate,
            gop,
            b_frames: if req.tier == Tier::Fast { 2 } else { 3 },
            threads: req.threads,
            pixel_format: out.codec.pixel_format(req.tier),
        };
        let default_name = out.codec.encoder_name();
        let preferred = req
            .h264_encoder
            .as_deref()
            .filter(|n| out.codec == VideoCodec::H264 && *n != default_name);
        let (codec, encoder, hw) = match preferred
            .map(|name| open_gpu_encoder(name, &settings, out.rung.max_bitrate))
        {
            Some(Ok(opened)) => opened,
            other => {
                if let (Some(name), Some(Err(e))) = (preferred, other) {
                    tracing::warn!(encoder = name, error = %e, "encoder failed to open; falling back to {default_name}");
                }
                let mut opts =
                    encoder_options(out.codec, req.tier, &out.rung, gop, req.psychovisual);
                if let Some(crf) = out.crf.or(req.crf.map(|c| c as f32)) {
                    opts.set("crf", &format!("{crf:.2}"));
                }
                let (codec, encoder) = open_encoder(default_name, &settings, opts, None)?;
                (codec, encoder, None)
            }
        };
        let (width, height) = (out.rung.width, out.rung.height);

        let v_ost = {
            let mut ost = octx
                .add_stream(codec)
                .map_err(MediaError::ffmpeg("adding the video stream"))?;
            ost.set_parameters(&*encoder);
            ost.set_time_base(enc_tb);
            // Let the muxer pick the tag (avc1, hvc1, av01).
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.index()
        };
        if out.codec == VideoCodec::Hevc {
            // hvc1 (parameter sets in the sample entry) is what Apple players require.
            let tag = u32::from_le_bytes(*b"hvc1");
            unsafe {
                (*octx
                    .stream(v_ost)
                    .expect("added")
                    .parameters()
                    .as_ptr()
                    .cast_mut())
                .codec_tag = tag
            };
        }
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
        let mut mux_opts = ffmpeg_next::Dictionary::new();
        mux_opts.set("movflags", "+faststart");
        octx.write_header_with(mux_opts)
            .map_err(MediaError::ffmpeg("writing the MP4 header"))?;
        let v_ost_tb = octx.stream(v_ost).expect("stream just added").time_base();
        let a_ost = a_index.map(|i| (i, octx.stream(i).expect("stream just added").time_base()));
        let frame_ticks = 1i64.rescale(frame_rate.invert(), enc_tb).max(1);
        Ok(Self {
            name: out.rung.name.clone(),
            codec: out.codec,
            path: out.path.clone(),
            octx,
            scaler: None,
            pixel_format: hw
                .as_ref()
                .map_or(settings.pixel_format, HwFrames::sw_format),
            encoder,
            hw,
            width,
            height,
            enc_tb,
            frame_ticks,
            last_pts: None,
            v_ost,
            v_ost_tb,
            a_ost,
            frames: 0,
            first_pts: None,
            end_pts: 0,
        })
    }

    /// Scales and encodes one frame; returns the scaled frame (before any upload to a device).
    pub(super) fn push_frame(
        &mut self,
        input: &frame::Video,
        pts: i64,
    ) -> Result<frame::Video, MediaError> {
        let stale = self.scaler.as_ref().is_none_or(|s| {
            s.input().width != input.width()
                || s.input().height != input.height()
                || s.input().format != input.format()
        });
        if stale {
            self.scaler = Some(
                scaling::Context::get(
                    input.format(),
                    input.width(),
                    input.height(),
                    self.pixel_format,
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
        // Strictly increasing, even where rounding to the encoder clock makes two frames meet.
        let pts = self.last_pts.map_or(pts, |last| pts.max(last + 1));
        self.last_pts = Some(pts);
        scaled.set_pts(Some(pts));
        scaled.set_kind(input.kind());
        let sent = match &self.hw {
            Some(hw) => {
                let uploaded: frame::Video = hw.upload(&scaled)?;
                self.encoder.send_frame(&uploaded)
            }
            None => self.encoder.send_frame(&scaled),
        };
        sent.map_err(MediaError::ffmpeg("encoding video"))?;
        self.drain_encoder()?;
        Ok(scaled)
    }

    pub(super) fn drain_encoder(&mut self) -> Result<(), MediaError> {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            // FFmpeg 5.1's libx264 leaves durations at 0, and the MP4 muxer then drops the
            // last frame's duration: set it before rescaling.
            if pkt.duration() <= 0 {
                pkt.set_duration(self.frame_ticks);
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

    pub(super) fn write_audio(&mut self, pkt: &Packet, enc_tb: Rational) -> Result<(), MediaError> {
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

    pub(super) fn finish(
        mut self,
        has_audio: bool,
        concealed: Concealed,
    ) -> Result<RenditionReport, MediaError> {
        self.encoder
            .send_eof()
            .map_err(MediaError::ffmpeg("flushing the encoder"))?;
        self.drain_encoder()?;
        self.octx
            .write_trailer()
            .map_err(MediaError::ffmpeg("writing the MP4 trailer"))?;
        let extradata = unsafe {
            let ctx = self.encoder.as_ptr();
            let (ptr, len) = ((*ctx).extradata, (*ctx).extradata_size);
            if ptr.is_null() || len <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(ptr, len as usize).to_vec()
            }
        };
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
            codec: self.codec,
            codec_string: codec_string(self.codec, &extradata),
            path: self.path,
            width: self.width,
            height: self.height,
            frames: self.frames,
            duration_seconds,
            bytes,
            bitrate,
            has_audio,
            concealed,
        })
    }
}
