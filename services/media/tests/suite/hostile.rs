//! A hostile-input campaign: malformed and hostile files (truncated, bit-flipped, wrong
//! container, huge claimed duration, random bytes with MPEG-TS sync bytes, zero-length, a decode
//! bomb) through the chunk check and the whole pipeline. Every one ends in a typed error with a
//! stable code, or a faithful transcode; none panics, hangs or runs away with memory. Prints a
//! table (`cargo test -p vtx-media --test suite hostile -- --nocapture`); docs/benchmarks.md keeps it.

use std::time::{Duration, Instant};

use vtx_media::{Deadline, Limits, PipelineRequest, Tier, inspect_chunk, run_pipeline};

/// Peak resident memory of this process so far, in MiB (Linux).
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

#[test]
fn every_hostile_file_ends_in_a_stable_code_or_a_good_transcode() {
    let stable = [
        "not-a-video",
        "no-video-stream",
        "unsupported-codec",
        "too-long",
        "too-large",
        "corrupt-stream",
        "transcode-timeout",
    ];
    println!("| input | chunk check | vtx transcode | seconds |");
    println!("| --- | --- | --- | --- |");
    for (name, file) in vtx_testkit::recordings::hostile_corpus() {
        let started = Instant::now();
        let check = match inspect_chunk(
            &file,
            &Limits::default(),
            Deadline::after(Duration::from_secs(30)),
        ) {
            Ok(_) => "accepted".to_string(),
            Err(vtx_media::ChunkError::Media(e)) => {
                let code = e.code().as_str().to_string();
                assert!(stable.contains(&code.as_str()), "{name}: chunk check {e}");
                code
            }
            Err(vtx_media::ChunkError::NotGopAligned) => "chunk-not-gop-aligned".to_string(),
            Err(_) => "chunk-not-media".to_string(),
        };
        let out = tempfile::tempdir().unwrap();
        let mut req = PipelineRequest::new(&file, out.path());
        req.tier = Tier::Fast;
        req.quality = false;
        req.jobs = 2;
        req.deadline = Deadline::after(Duration::from_secs(120));
        let transcode = match run_pipeline(&req) {
            Ok(m) => format!("transcoded ({} frames)", m.renditions[0].frames),
            Err(e) => {
                let code = e.code().as_str().to_string();
                assert!(stable.contains(&code.as_str()), "{name}: transcode {e}");
                assert!(
                    std::fs::read_dir(out.path()).unwrap().next().is_none(),
                    "{name}: a failure leaves nothing behind"
                );
                code
            }
        };
        let secs = started.elapsed().as_secs_f64();
        assert!(secs < 120.0, "{name}: {secs} s");
        println!("| {name} | {check} | {transcode} | {secs:.2} |");
    }
    let peak = peak_rss_mib();
    println!("\npeak RSS of the whole campaign: {peak} MiB");
    assert!(peak < 1024, "peak RSS {peak} MiB");
}
