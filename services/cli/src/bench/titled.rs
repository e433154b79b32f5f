//! One per-title encode for the benches: the search on the whole clip (one slice, as a slice
//! encode runs it), then the encode at the chosen rate factor, measured against the source.

use std::path::Path;

use vtx_domain::{QualityTarget, Rung};
use vtx_media::per_title::{Search, choose_crfs};
use vtx_media::{
    Deadline, RenditionOutput, Tier, TranscodeRequest, VideoCodec, VideoInfo, Window,
    transcode_ladder,
};

use super::measure_cost;

/// One encode, measured against the source.
#[derive(Clone, Copy, Debug)]
pub(super) struct Measured {
    pub rate: f64,
    pub psnr: f64,
    pub ssim: f64,
    /// `None` without the `vmaf` tool.
    pub vmaf: Option<f64>,
    /// CPU seconds (of the search too, for a per-title encode).
    pub cpu: f64,
}

/// What a per-title encode chose and reached.
#[derive(Clone, Copy, Debug)]
pub(super) struct Titled {
    pub crf: f32,
    /// The target on the search's scale (for `FastTier`, what the fast tier reached).
    pub target: f64,
    pub m: Measured,
}

/// How the benches encode: the clip, its rung, and the settings every encode shares.
pub(super) struct Encoding<'a> {
    pub input: &'a Path,
    pub video: &'a VideoInfo,
    pub rung: &'a Rung,
    pub psychovisual: bool,
    pub threads: Option<usize>,
    /// The `vmaf` tool: VMAF is measured too.
    pub vmaf: Option<&'a Path>,
    pub dir: &'a Path,
}

impl Encoding<'_> {
    /// A request for one output of `codec` at `tier`, with no audio.
    pub fn request(
        &self,
        codec: VideoCodec,
        tier: Tier,
        crf: Option<f32>,
        name: &str,
    ) -> TranscodeRequest {
        let mut req = TranscodeRequest::new(
            self.input,
            vec![RenditionOutput {
                rung: self.rung.clone(),
                codec,
                path: self.dir.join(name),
                crf,
            }],
            tier,
        );
        req.audio = false;
        req.rotation = self.video.rotation;
        req.threads = self.threads;
        req.psychovisual = self.psychovisual;
        req
    }

    /// Encodes `req`'s one output and measures it.
    pub fn run(&self, req: &TranscodeRequest) -> anyhow::Result<Measured> {
        let path = &req.outputs[0].path;
        let (cost, report) = measure_cost(|| Ok(transcode_ladder(req)?))?;
        let q = vtx_media::measure_window(
            self.input,
            None,
            self.video.rotation,
            std::slice::from_ref(path),
            self.vmaf,
            Deadline::none(),
        )?;
        let _ = std::fs::remove_file(path);
        Ok(Measured {
            rate: report[0].bitrate as f64,
            psnr: q[0].psnr,
            ssim: q[0].ssim,
            vmaf: q[0].vmaf,
            cpu: cost.cpu,
        })
    }

    /// Per-title for `codec` at `tier` towards `target`, then the encode at its choice.
    pub fn per_title(
        &self,
        codec: VideoCodec,
        tier: Tier,
        target: QualityTarget,
    ) -> anyhow::Result<Titled> {
        let name = format!("per-title-{}.mp4", codec.label());
        let req = self.request(codec, tier, None, &name);
        let (search_cost, mut choice) = measure_cost(|| {
            Ok(choose_crfs(
                &Search {
                    input: self.input,
                    window: Window::whole(self.video),
                    frame_rate: self.video.frame_rate_q,
                    rotation: self.video.rotation,
                    tier,
                    target,
                    psychovisual: self.psychovisual,
                    vmaf: self.vmaf,
                    threads: self.threads,
                    scratch: &self.dir.join("per-title"),
                    deadline: Deadline::none(),
                },
                &req.outputs,
            )?)
        })?;
        let choice = choice.remove(0);
        let req = self.request(codec, tier, Some(choice.crf), &name);
        let mut m = self.run(&req)?;
        m.cpu += search_cost.cpu;
        Ok(Titled {
            crf: choice.crf,
            target: choice.target,
            m,
        })
    }
}
