//! `vtx bench pipeline`: publish latency by clip length, 1 vs 2 worker processes.

use super::*;

/// `vtx bench pipeline`: publish latency by clip length, and a long video on 1 vs 2 workers.
pub async fn pipeline() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut clips = Vec::new();
    for (label, loops) in [("15 s", 3u32), ("60 s", 12), ("5 min", 57)] {
        clips.push((label, looped_bbb(scratch.path(), loops)?));
    }
    println!(
        "720p clips (the shared Big Buck Bunny excerpt looped), fast tier only; each worker process pinned to one core"
    );
    println!();
    println!(
        "| clip | workers | slices | upload complete -> published, s | planning s | encoding s | merging s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut long = Vec::new();
    for workers in [2usize, 1] {
        let stack = BenchStack::start("fast").await?;
        let _w = stack.workers(workers).await?;
        for (label, clip) in &clips {
            if workers == 1 && *label != "5 min" {
                continue;
            }
            let (secs, job) = stack.publish_latency(clip).await?;
            let view = stack.client.job(job).await?;
            let fast = view.tiers.first();
            let ms =
                |v: Option<u64>| v.map_or("-".to_string(), |m| format!("{:.1}", m as f64 / 1000.0));
            println!(
                "| {label} | {workers} | {} | {secs:.1} | {} | {} | {} |",
                fast.map_or(0, |t| t.slices_total),
                ms(view.planning_ms),
                ms(fast.and_then(|t| t.encode_ms)),
                ms(fast.and_then(|t| t.merge_ms)),
            );
            if *label == "5 min" {
                long.push((workers, secs));
            }
        }
        stack.stop().await;
    }
    if let [(2, two), (1, one)] = long[..] {
        println!();
        println!(
            "5-minute video: 1 worker {one:.1} s, 2 workers {two:.1} s: speed-up {:.2}x",
            one / two
        );
    }
    Ok(())
}
