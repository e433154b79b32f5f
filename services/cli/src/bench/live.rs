//! `vtx bench live`: `vtx upload --live`, publish latency after the last chunk.

use super::*;

/// `vtx bench live`: `vtx upload --live` (chunks paced at the video's real-time rate, as a phone
/// still recording sends them) of a 60 s and a 5-minute clip; the publish latency after the
/// last chunk was stored, median over `runs` (`long_runs` for the 5-minute clip).
pub async fn live(runs: usize, long_runs: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let stack = BenchStack::start("fast").await?;
    let _w = stack.workers(2).await?;
    println!(
        "| source | clip | chunks | runs | last chunk -> published, s (median) | all runs, s |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    let sources = [
        (
            "phone-like: keyframe every 1 s",
            phone_like_bbb(scratch.path())?,
        ),
        (
            "shared clip as is: keyframe every 5.28 s",
            shared_clip("bigbuckbunny.mp4"),
        ),
    ];
    for (source, base) in &sources {
        for (label, loops, n) in [("60 s", 12u32, runs), ("5 min", 57, long_runs)] {
            if n == 0 {
                continue;
            }
            let clip = loop_clip(base, scratch.path(), loops)?;
            let opts = vtx_client::UploadOptions {
                live: true,
                ..Default::default()
            };
            let mut latencies = Vec::new();
            let mut chunks = 0;
            for _ in 0..n {
                let report = stack.client.upload_video(&clip, &opts, &|_, _| {}).await?;
                chunks = report.chunks;
                stack.wait_published(report.completed.video_id).await?;
                latencies.push(report.last_chunk_stored.elapsed().as_secs_f64());
            }
            let mut sorted = latencies.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "| {source} | {label} | {chunks} | {n} | {:.2} | {} |",
                sorted[sorted.len() / 2],
                latencies
                    .iter()
                    .map(|l| format!("{l:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    stack.stop().await;
    Ok(())
}
