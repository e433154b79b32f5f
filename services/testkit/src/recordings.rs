//! Inputs that look like what phones and cameras upload, derived from the shared 720p clip with
//! the ffmpeg command line (320x180, 5 s, so each costs well under a second to make): variable
//! frame rate, audio stored before video in the file, AAC priming and edit lists, audio that
//! starts before or after video, 29.97 and 30 fps, rotation, AVI without presentation times, and
//! one damaged audio frame or video packet made by flipping bytes of that one packet.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{derived, media};

fn clip() -> String {
    media("bigbuckbunny.mp4")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// x264 as a phone's encoder: High profile, B-frames, one thread (deterministic output).
const X264: [&str; 10] = [
    "-c:v",
    "libx264",
    "-threads",
    "1",
    "-profile:v",
    "high",
    "-bf",
    "3",
    "-preset",
    "veryfast",
];
const AAC: [&str; 6] = ["-c:a", "aac", "-ac", "2", "-b:a", "96k"];
/// Every frame for 2 s (25 fps), then every second (12.5 fps), then every third (8.3 fps).
const VFR: &str = "scale=320:180,select='if(lt(t\\,2)\\,1\\,if(lt(t\\,3.5)\\,not(mod(n\\,2))\\,not(mod(n\\,3))))'";

fn args<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// The clean base: 25 fps CFR, H.264 High with B-frames, AAC with its priming edit list.
pub fn base() -> PathBuf {
    let c = clip();
    derived(
        "rec-base.mp4",
        &args(&[&["-i", &c, "-t", "5", "-vf", "scale=320:180"], &X264, &AAC]),
    )
}

/// A phone recording: variable frame rate, B-frames, AAC from t = 0, and about a second of
/// audio stored in the file before the first video sample (x264's lookahead holds video back
/// while the muxer writes the audio it already has).
pub fn vfr_phone() -> PathBuf {
    let c = clip();
    derived(
        "rec-vfr-phone.mp4",
        &args(&[
            &["-i", &c, "-t", "5", "-vf", VFR, "-fps_mode", "vfr"],
            &X264,
            &["-rc-lookahead", "25"],
            &AAC,
            &["-max_interleave_delta", "1"],
        ]),
    )
}

/// Segments at 30, 24 and 15 fps back to back on a 1/90000 clock.
pub fn vfr_concat() -> PathBuf {
    let c = clip();
    derived(
        "rec-vfr-concat.mp4",
        &args(&[
            &[
                "-i",
                &c,
                "-t",
                "5",
                "-filter_complex",
                "[0:v]scale=320:180,split=3[a][b][c];\
                 [a]trim=0:2,setpts=PTS-STARTPTS,fps=30[a1];\
                 [b]trim=2:3.5,setpts=PTS-STARTPTS,fps=24[b1];\
                 [c]trim=3.5:5,setpts=PTS-STARTPTS,fps=15[c1];\
                 [a1][b1][c1]concat=n=3:v=1:a=0,settb=1/90000[v]",
                "-map",
                "[v]",
                "-map",
                "0:a",
                "-fps_mode",
                "vfr",
            ],
            &X264,
            &AAC,
        ]),
    )
}

/// The clean base with one stream moved `offset` seconds later (a copy, no re-encode):
/// `-itsoffset` on a second input of the same file, then its `moved` stream with the other one.
fn moved_stream(name: &str, offset: &str, moved: &str) -> PathBuf {
    let b = base();
    let (video, audio) = if moved == "v" {
        ("1:v", "0:a")
    } else {
        ("0:v", "1:a")
    };
    derived(
        name,
        &[
            "-i",
            s(&b),
            "-itsoffset",
            offset,
            "-i",
            s(&b),
            "-map",
            video,
            "-map",
            audio,
            "-c",
            "copy",
        ],
    )
}

/// Audio starts 0.5 s before the video.
pub fn audio_early() -> PathBuf {
    moved_stream("rec-audio-early.mp4", "0.5", "v")
}

/// Audio starts 0.5 s after the video (the offset also moves the AAC priming: 0.521 s puts the
/// first audible sample at 0.5 s).
pub fn audio_late() -> PathBuf {
    moved_stream("rec-audio-late.mp4", "0.521333", "a")
}

/// An edit list hides the first 0.5 s of the audio.
pub fn audio_cut() -> PathBuf {
    moved_stream("rec-audio-cut.mp4", "-0.5", "a")
}

/// 29.97 fps (30000/1001) CFR with B-frames and a single keyframe, and MP3 audio.
pub fn ntsc_mp3() -> PathBuf {
    let c = clip();
    derived(
        "rec-2997-mp3.mp4",
        &args(&[
            &["-i", &c, "-t", "5", "-vf", "scale=320:180,fps=30000/1001"],
            &X264,
            // A long GOP, as some cameras write: one keyframe.
            &["-g", "300"],
            &["-c:a", "libmp3lame", "-ac", "2", "-b:a", "128k"],
        ]),
    )
}

/// 30 fps CFR with B-frames, AAC.
pub fn cfr30() -> PathBuf {
    let c = clip();
    derived(
        "rec-30.mp4",
        &args(&[
            &["-i", &c, "-t", "5", "-vf", "scale=320:180,fps=30"],
            &X264,
            &AAC,
        ]),
    )
}

/// A portrait phone recording: the display matrix turns the picture a quarter clockwise
/// (`rotation=-90` in ffprobe, as phones write it).
pub fn portrait() -> PathBuf {
    let b = base();
    derived(
        "rec-portrait.mp4",
        &["-i", s(&b), "-c", "copy", "-metadata:s:v:0", "rotate=270"],
    )
}

/// MPEG-4 Part 2 with B-frames and MP3 in AVI: the key and P frames carry no presentation time,
/// so `ffmpeg -c copy -f mpegts` refuses it ("first pts and dts value must be set").
pub fn avi_without_pts() -> PathBuf {
    let c = clip();
    derived(
        "rec-mpeg4-bf.avi",
        &[
            "-i",
            &c,
            "-t",
            "5",
            "-vf",
            "scale=320:180",
            "-c:v",
            "mpeg4",
            "-bf",
            "2",
            "-q:v",
            "5",
            "-vtag",
            "XVID",
            "-threads",
            "1",
            "-c:a",
            "libmp3lame",
            "-ac",
            "2",
            "-b:a",
            "128k",
            "-f",
            "avi",
        ],
    )
}

/// MPEG-4 Part 2 + AC-3 in AVI.
pub fn avi_ac3() -> PathBuf {
    let c = clip();
    derived(
        "rec-mpeg4-ac3.avi",
        &[
            "-i",
            &c,
            "-t",
            "5",
            "-vf",
            "scale=320:180",
            "-c:v",
            "mpeg4",
            "-q:v",
            "5",
            "-vtag",
            "XVID",
            "-threads",
            "1",
            "-c:a",
            "ac3",
            "-ac",
            "2",
            "-b:a",
            "128k",
            "-f",
            "avi",
        ],
    )
}

/// How a packet is damaged.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// 16 bytes in the middle of its payload flipped: its headers survive.
    Middle,
    /// Every byte after the first four (an MP4 NAL length) flipped: nothing of it decodes.
    Whole,
}

/// `src` with the payload of one packet of `stream` ("a:0", "v:0") flipped: the `index`-th
/// (for video, the first non-key packet from the `index`-th on). The file's size is unchanged.
pub fn damaged(name: &str, src: &Path, stream: &str, index: usize, how: Damage) -> PathBuf {
    damaged_packets(name, src, stream, &[index], how)
}

/// As [`damaged`], for several packets.
pub fn damaged_packets(
    name: &str,
    src: &Path,
    stream: &str,
    indexes: &[usize],
    how: Damage,
) -> PathBuf {
    let dir = crate::fixture_dir();
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    let packets = packets(src, stream);
    let mut bytes = std::fs::read(src).expect("source readable");
    for &index in indexes {
        let i = if stream.starts_with('v') {
            (index..packets.len())
                .find(|&i| !packets[i].key)
                .expect("a non-key packet")
        } else {
            index
        };
        let p = &packets[i];
        let (start, n) = match how {
            Damage::Middle => (p.pos + p.size / 2, 16.min(p.size - p.size / 2)),
            Damage::Whole => (p.pos + 4, p.size.saturating_sub(4)),
        };
        for b in &mut bytes[start..start + n] {
            *b ^= 0xA5;
        }
    }
    let tmp = dir.join(format!("{name}.{}.part", std::process::id()));
    std::fs::write(&tmp, bytes).expect("write damaged copy");
    std::fs::rename(&tmp, &out).expect("fixture rename");
    out
}

struct PacketAt {
    pos: usize,
    size: usize,
    key: bool,
}

fn packets(src: &Path, stream: &str) -> Vec<PacketAt> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "packet=pos,size,flags", "-of", "json"])
        .arg(src)
        .output()
        .expect("ffprobe runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| PacketAt {
            pos: p["pos"].as_str().and_then(|x| x.parse().ok()).expect("pos"),
            size: p["size"]
                .as_str()
                .and_then(|x| x.parse().ok())
                .expect("size"),
            key: p["flags"].as_str().unwrap_or("").contains('K'),
        })
        .collect()
}

/// A decode bomb: an MPEG-TS chunk (a GOP-aligned upload chunk) that starts with 4 s of
/// 320x240 and then switches to 8192x8192 frames (67 megapixels each), whose declared size is
/// the small one.
pub fn size_bomb() -> PathBuf {
    let dir = crate::fixture_dir();
    let out = dir.join("bomb.ts");
    if out.exists() {
        return out;
    }
    let small = derived(
        "bomb-small.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=320x240:r=25:d=4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "mpegts",
        ],
    );
    let big = derived(
        "bomb-big.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=black:s=8192x8192:r=25:d=0.2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-threads",
            "1",
            "-f",
            "mpegts",
        ],
    );
    let mut bytes = std::fs::read(small).expect("small part");
    bytes.extend(std::fs::read(big).expect("big part"));
    let tmp = dir.join(format!("bomb.ts.{}.part", std::process::id()));
    std::fs::write(&tmp, bytes).expect("write the bomb");
    std::fs::rename(&tmp, &out).expect("fixture rename");
    out
}

/// Malformed and hostile files derived from the shared clips: what a stranger may send. Each
/// (name, file); made once per target directory.
pub fn hostile_corpus() -> Vec<(&'static str, PathBuf)> {
    let dir = crate::fixture_dir().join("hostile");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let source = std::fs::read(base()).expect("base clip");
    let chunk = {
        let b = base();
        let ts = derived(
            "hostile-chunk.ts",
            &["-i", s(&b), "-c", "copy", "-f", "mpegts"],
        );
        std::fs::read(ts).expect("chunk")
    };
    // A small deterministic generator: the same corpus every run.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let flipped = |bytes: &[u8], every: usize| -> Vec<u8> {
        let mut b = bytes.to_vec();
        for (i, x) in b.iter_mut().enumerate() {
            if i > 4096 && i % every == 0 {
                *x ^= 0x5A;
            }
        }
        b
    };
    let mut ts_noise = noise(188 * 600);
    for p in ts_noise.chunks_mut(188) {
        p[0] = 0x47; // sync bytes, so it looks like MPEG-TS
    }
    // An MP4 whose header claims a duration of about 50 days.
    let mut long_claim = source.clone();
    if let Some(at) = long_claim.windows(4).position(|w| w == b"mvhd") {
        // version 0: version/flags, creation, modification, timescale, then the duration.
        let d = at + 4 + 4 + 4 + 4 + 4;
        long_claim[d..d + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    }
    let items: Vec<(&'static str, Vec<u8>)> = vec![
        ("zero-length", Vec::new()),
        ("random bytes", noise(100_000)),
        ("random bytes with MPEG-TS sync bytes", ts_noise),
        ("text", "not a video\n".repeat(1000).into_bytes()),
        (
            "MP4 truncated to 30%",
            source[..source.len() * 3 / 10].to_vec(),
        ),
        ("MP4 with every 500th byte flipped", flipped(&source, 500)),
        ("MP4 claiming a 50-day duration", long_claim),
        (
            "MPEG-TS truncated mid-packet",
            chunk[..chunk.len() / 2 + 77].to_vec(),
        ),
        (
            "MPEG-TS with every 300th byte flipped",
            flipped(&chunk, 300),
        ),
        (
            "JPEG named .mp4",
            std::fs::read(media("bigbuckbunny.mp4"))
                .map(|_| {
                    let jpg = derived(
                        "hostile-still.jpg",
                        &["-i", &clip(), "-frames:v", "1", "-f", "mjpeg"],
                    );
                    std::fs::read(jpg).expect("still")
                })
                .expect("clip"),
        ),
    ];
    let mut out: Vec<(&'static str, PathBuf)> = items
        .into_iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let path = dir.join(format!("{i:02}.bin"));
            std::fs::write(&path, bytes).expect("corpus file");
            (name, path)
        })
        .collect();
    out.push((
        "8192x8192 frames after 4 s of 320x240 (decode bomb)",
        size_bomb(),
    ));
    out
}
