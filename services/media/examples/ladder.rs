//! Development aid: `cargo run -p vtx-media --example ladder -- INPUT OUTDIR` runs the fast ladder.
use std::path::PathBuf;

use vtx_media::{
    Deadline, Limits, Preset, RenditionOutput, TranscodeRequest, probe, transcode_ladder,
};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let input = PathBuf::from(args.next().expect("INPUT"));
    let out = PathBuf::from(args.next().expect("OUTDIR"));
    std::fs::create_dir_all(&out).unwrap();
    let p = probe(&input, &Limits::default(), Deadline::none()).unwrap();
    println!("{}", serde_json::to_string_pretty(&p).unwrap());
    let req = TranscodeRequest {
        input,
        outputs: vtx_domain::plan_ladder(p.video.width, p.video.height)
            .into_iter()
            .map(|rung| RenditionOutput {
                path: out.join(format!("{}.mp4", rung.name)),
                rung,
            })
            .collect(),
        preset: Preset::Fast,
        gop_seconds: 2.0,
        deadline: Deadline::none(),
    };
    for r in transcode_ladder(&req).unwrap() {
        println!("{r:?}");
    }
}
