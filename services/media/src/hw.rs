//! GPU encoders that take frames in device memory (VAAPI, QSV): a device context, a pool of
//! device frames for the encoder, and the upload of each scaled frame into it. NVENC takes
//! frames from system memory and needs none of this.
//!
//! Whether a machine has such a GPU is decided here by opening the device: without one (a
//! container, a CI runner, this project's own machines) `HwFrames::new` fails and callers fall
//! back to libx264.

use ffmpeg_next::ffi;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;

use crate::MediaError;

/// The device type and the pixel format of device frames for a GPU encoder that needs them.
fn device_of(encoder: &str) -> Option<(ffi::AVHWDeviceType, ffi::AVPixelFormat)> {
    if encoder.ends_with("_vaapi") {
        Some((
            ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI,
            ffi::AVPixelFormat::AV_PIX_FMT_VAAPI,
        ))
    } else if encoder.ends_with("_qsv") {
        Some((
            ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_QSV,
            ffi::AVPixelFormat::AV_PIX_FMT_QSV,
        ))
    } else {
        None
    }
}

/// Whether `encoder` takes its frames in device memory.
pub(crate) fn needs_device_frames(encoder: &str) -> bool {
    device_of(encoder).is_some()
}

/// A pool of device frames of one size, for one encoder.
pub(crate) struct HwFrames {
    frames: *mut ffi::AVBufferRef,
    hw_format: ffi::AVPixelFormat,
}

// SAFETY: the frames context is reference counted by FFmpeg and only used by the thread that
// owns the encoder it belongs to.
unsafe impl Send for HwFrames {}

impl HwFrames {
    /// Opens the encoder's device and a frame pool of `width` x `height`. Fails when the
    /// machine has no such device (or no driver for it).
    pub(crate) fn new(encoder: &str, width: u32, height: u32) -> Result<Self, MediaError> {
        let (device_type, hw_format) = device_of(encoder).ok_or_else(|| {
            MediaError::UnsupportedCodec(format!("{encoder} takes frames in system memory"))
        })?;
        // SAFETY: plain FFmpeg calls; every reference taken is released on each path.
        unsafe {
            let mut device: *mut ffi::AVBufferRef = std::ptr::null_mut();
            let r = ffi::av_hwdevice_ctx_create(
                &mut device,
                device_type,
                std::ptr::null(),
                std::ptr::null_mut(),
                0,
            );
            if r < 0 || device.is_null() {
                return Err(MediaError::UnsupportedCodec(format!(
                    "{encoder}: no device ({})",
                    ffmpeg_next::Error::from(r)
                )));
            }
            let mut frames = ffi::av_hwframe_ctx_alloc(device);
            ffi::av_buffer_unref(&mut device);
            if frames.is_null() {
                return Err(MediaError::UnsupportedCodec(format!(
                    "{encoder}: no frame pool"
                )));
            }
            let ctx = (*frames).data.cast::<ffi::AVHWFramesContext>();
            (*ctx).format = hw_format;
            (*ctx).sw_format = ffi::AVPixelFormat::AV_PIX_FMT_NV12;
            (*ctx).width = width as i32;
            (*ctx).height = height as i32;
            (*ctx).initial_pool_size = 20;
            let r = ffi::av_hwframe_ctx_init(frames);
            if r < 0 {
                ffi::av_buffer_unref(&mut frames);
                return Err(MediaError::UnsupportedCodec(format!(
                    "{encoder}: frame pool ({})",
                    ffmpeg_next::Error::from(r)
                )));
            }
            Ok(Self { frames, hw_format })
        }
    }

    /// The format frames are scaled to before the upload.
    pub(crate) fn sw_format(&self) -> Pixel {
        Pixel::NV12
    }

    /// Gives an encoder context (not yet opened) this pool and the device frame format.
    pub(crate) fn attach(&self, enc: *mut ffi::AVCodecContext) {
        // SAFETY: `enc` is a live, unopened context; it takes its own reference to the pool.
        unsafe {
            (*enc).pix_fmt = self.hw_format;
            (*enc).hw_frames_ctx = ffi::av_buffer_ref(self.frames);
        }
    }

    /// Copies a scaled frame (in `sw_format`) into a device frame with the same timing.
    pub(crate) fn upload(&self, sw: &frame::Video) -> Result<frame::Video, MediaError> {
        let mut hw = frame::Video::empty();
        // SAFETY: `hw` is an empty frame that get_buffer fills from the pool.
        unsafe {
            let r = ffi::av_hwframe_get_buffer(self.frames, hw.as_mut_ptr(), 0);
            if r < 0 {
                return Err(MediaError::ffmpeg("getting a device frame")(
                    ffmpeg_next::Error::from(r),
                ));
            }
            let r = ffi::av_hwframe_transfer_data(hw.as_mut_ptr(), sw.as_ptr(), 0);
            if r < 0 {
                return Err(MediaError::ffmpeg("uploading a frame")(
                    ffmpeg_next::Error::from(r),
                ));
            }
        }
        hw.set_pts(sw.pts());
        hw.set_kind(sw.kind());
        Ok(hw)
    }
}

impl Drop for HwFrames {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `new`.
        unsafe { ffi::av_buffer_unref(&mut self.frames) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vaapi_and_qsv_take_device_frames() {
        assert!(needs_device_frames("h264_vaapi"));
        assert!(needs_device_frames("hevc_qsv"));
        assert!(!needs_device_frames("h264_nvenc"));
        assert!(!needs_device_frames("libx264"));
        assert!(HwFrames::new("libx264", 64, 64).is_err());
    }
}
