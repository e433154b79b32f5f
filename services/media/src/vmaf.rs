//! VMAF (Netflix's perceptual metric, model `vmaf_v0.6.1`) through Netflix's own `vmaf` tool,
//! fed the frames `quality` already decodes: the source, and the output scaled (bicubic) up to
//! the source's size, as Netflix scores a rendition at the size it is shown; both at 10 bits,
//! as YUV4MPEG streams on two pipes. (The model was made for 1080p viewing: a small rung
//! scored at its own size would score high.) Debian's FFmpeg has no
//! `libvmaf` filter; deploy/local/setup.sh builds the tool from the libvmaf source the crates.io
//! crate `libvmaf-sys` vendors. Linking libvmaf instead would put meson, ninja and nasm into
//! every build of the workers; the tool keeps them in setup.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use ffmpeg_next::{filter, frame};

use crate::MediaError;

/// Frames in flight per pipe.
const QUEUE: usize = 4;

/// A thread writing one YUV4MPEG stream, and the queue of frames it writes.
type Writer = (SyncSender<Vec<u8>>, JoinHandle<std::io::Result<()>>);

/// One output's VMAF, computed by the tool while frames are pushed.
pub(crate) struct VmafComparison {
    graph: filter::Graph,
    child: Child,
    /// What the tool says on stderr, read as it goes (a full pipe would stop it).
    stderr: Option<JoinHandle<String>>,
    json: tempfile::TempPath,
    writers: Vec<Writer>,
    pts: i64,
    width: u32,
    height: u32,
}

fn tool_error(what: impl std::fmt::Display) -> MediaError {
    MediaError::UnsupportedCodec(format!("vmaf: {what}"))
}

/// A pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, std::fs::File), MediaError> {
    let (r, w) = std::io::pipe().map_err(|e| tool_error(format!("pipe: {e}")))?;
    Ok((OwnedFd::from(r), std::fs::File::from(OwnedFd::from(w))))
}

impl VmafComparison {
    pub(crate) fn new(
        tool: &Path,
        reference: &frame::Video,
        distorted: &frame::Video,
    ) -> Result<Self, MediaError> {
        let (width, height) = (reference.width(), reference.height());
        let graph = crate::quality::pair_graph(
            reference,
            distorted,
            &format!(
                "[dist]scale={width}:{height}:flags=bicubic,format=yuv420p10le[d];\
                 [ref]format=yuv420p10le[r]"
            ),
            &["d", "r"],
        )?;
        let json = tempfile::Builder::new()
            .prefix("vtx-vmaf-")
            .suffix(".json")
            .tempfile()?
            .into_temp_path();
        let (ref_read, ref_write) = pipe()?;
        let (dist_read, dist_write) = pipe()?;
        let (ref_fd, dist_fd) = (ref_read.as_raw_fd(), dist_read.as_raw_fd());
        let mut command = Command::new(tool);
        command
            .args([
                "-q",
                "--threads",
                "1",
                "--model",
                "version=vmaf_v0.6.1",
                "--json",
            ])
            .arg("-o")
            .arg(&*json)
            .args(["-r", "/dev/fd/3", "-d", "/dev/fd/4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec. The read ends are first
        // copied above 4 (a copy has no close-on-exec flag), so that neither is overwritten by
        // the other's move to 3 or 4.
        unsafe {
            command.pre_exec(move || {
                let high = [ref_fd, dist_fd].map(|fd| libc::fcntl(fd, libc::F_DUPFD, 10));
                for (from, to) in high.into_iter().zip([3, 4]) {
                    if from < 0 || libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| tool_error(format!("starting {}: {e}", tool.display())))?;
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut err, &mut text);
                text
            })
        });
        // The child holds its copies; ours go, so that the tool sees the end of each stream.
        drop((ref_read, dist_read));
        let header = format!("YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420p10 XYSCSS=420P10\n");
        let writers = [ref_write, dist_write]
            .into_iter()
            .map(|mut file| {
                let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
                let header = header.clone();
                let handle = std::thread::spawn(move || {
                    file.write_all(header.as_bytes())?;
                    for frame in rx {
                        file.write_all(b"FRAME\n")?;
                        file.write_all(&frame)?;
                    }
                    Ok(())
                });
                (tx, handle)
            })
            .collect();
        Ok(Self {
            graph,
            child,
            stderr,
            json,
            writers,
            pts: 0,
            width,
            height,
        })
    }

    /// Feeds one pair of frames.
    pub(crate) fn push(
        &mut self,
        reference: &frame::Video,
        distorted: &frame::Video,
    ) -> Result<(), MediaError> {
        crate::quality::feed_pair(&mut self.graph, reference, distorted, self.pts)?;
        self.pts += 1;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), MediaError> {
        let mut f = frame::Video::empty();
        // The two sinks give frames in step: the i-th of each is a pair.
        for (i, sink) in ["r", "d"].iter().enumerate() {
            while self
                .graph
                .get(sink)
                .expect("added in new")
                .sink()
                .frame(&mut f)
                .is_ok()
            {
                let bytes = planes(&f, self.width, self.height);
                if self.writers[i].0.send(bytes).is_err() {
                    return Err(tool_error("the tool stopped reading"));
                }
            }
        }
        Ok(())
    }

    /// Flushes the last frames and waits for the tool's score.
    pub(crate) fn finish(mut self) -> Result<f64, MediaError> {
        crate::quality::flush_pair(&mut self.graph)?;
        let drained = self.drain();
        let mut written = Ok(());
        for (tx, handle) in self.writers.drain(..) {
            drop(tx);
            if let Ok(Err(e)) = handle.join() {
                written = Err(e);
            }
        }
        let status = self.child.wait()?;
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        // The tool's own word first: a failed write is usually its having stopped.
        if !status.success() {
            return Err(tool_error(format!("exited with {status}: {}", said.trim())));
        }
        drained?;
        written.map_err(|e| tool_error(format!("writing frames: {e}")))?;
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.json)?)
            .map_err(|e| tool_error(format!("its report: {e}")))?;
        report["pooled_metrics"]["vmaf"]["mean"]
            .as_f64()
            .ok_or_else(|| tool_error("no pooled score in its report"))
    }
}

impl Drop for VmafComparison {
    fn drop(&mut self) {
        // Abandoned (an error, a deadline): the writers end, and the tool is stopped.
        self.writers.clear();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three planes of a 10-bit 4:2:0 frame, rows without padding.
fn planes(f: &frame::Video, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(w * h * 3);
    for (plane, pw, ph) in [
        (0, w, h),
        (1, w.div_ceil(2), h.div_ceil(2)),
        (2, w.div_ceil(2), h.div_ceil(2)),
    ] {
        let data = f.data(plane);
        let stride = f.stride(plane);
        for row in 0..ph {
            out.extend_from_slice(&data[row * stride..row * stride + pw * 2]);
        }
    }
    out
}

/// The tool at `path`, if it runs.
pub fn vmaf_tool(path: &Path) -> Result<PathBuf, String> {
    match Command::new(path).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(path.to_path_buf()),
        Ok(o) => Err(format!(
            "{} --version exited with {}",
            path.display(),
            o.status
        )),
        Err(e) => Err(format!(
            "{}: {e} (deploy/local/setup.sh builds it under .vtx/vmaf)",
            path.display()
        )),
    }
}
