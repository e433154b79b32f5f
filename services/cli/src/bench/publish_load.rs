//! `vtx bench publish-load`: publish latency under a steady stream of live uploads, and
//! instant publish of full-speed uploads.

use super::*;
use std::sync::Arc;
use std::time::Duration;

/// One upload's times after its last chunk was stored: until published, until the high tier
/// was live.
#[derive(Clone, Copy, Debug)]
struct Times {
    published: f64,
    high: f64,
}

/// `vtx bench publish-load`: on two worker processes (each pinned to a core), steady streams of
/// live uploads (chunks paced at the video's real-time rate) of `lengths` seconds arriving at
/// `loads` of the box's fast+high capacity for `seconds` each; per length and load, the
/// publish latency after the last chunk (p50, p95, max) and the time until the high tier is
/// live. The capacity is measured first, from the CPU time one idle upload of each length costs
/// (which also gives the idle latency). Then full-speed uploads (not paced) of `lengths` with
/// instant publish on: time from the last chunk to published.
pub async fn publish_load(seconds: u64, loads: Vec<f64>, lengths: Vec<u32>) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let base = phone_like_360(scratch.path())?;
    let mut clips = Vec::new();
    for &len in &lengths {
        // The base clip lasts 5.28 s.
        let loops = ((f64::from(len) / 5.28).round() as u32).max(1);
        clips.push((len, loop_clip(&base, scratch.path(), loops)?));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    println!(
        "640x360 phone-like clip (keyframe every 1 s, AAC), tiers fast,high, 2 worker processes each pinned to a core, {cores} cores"
    );
    println!();

    let stack = BenchStack::start("fast,high").await?;
    let workers = stack.workers(2).await?;
    let pids: Vec<u32> = workers.iter().map(|w| w.0.id()).collect();
    let client = Arc::new(stack.client.clone());

    // Idle: one upload at a time; its CPU cost gives the capacity.
    println!(
        "| clip | idle: published after last chunk, s | high tier live after last chunk, s | CPU s per video s (fast+high) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    let mut idle = Vec::new();
    let mut cost_per_second = Vec::new();
    for (len, clip) in &clips {
        let before = cpu_of(&pids) + cpu_seconds();
        let t = live_upload(&client, clip).await?;
        let cost = (cpu_of(&pids) + cpu_seconds() - before) / f64::from(*len);
        println!(
            "| {len} s | {:.2} | {:.1} | {cost:.2} |",
            t.published, t.high
        );
        idle.push((*len, t));
        cost_per_second.push(cost);
    }
    let cost = cost_per_second.iter().sum::<f64>() / cost_per_second.len().max(1) as f64;
    let capacity = cores / cost;
    println!();
    println!(
        "capacity: {capacity:.2} video seconds per second ({cost:.2} CPU s per video s on {cores} cores)"
    );
    println!();

    println!(
        "| clip | load | uploads | published after last chunk p50 / p95 / max, s | p95 / idle | high tier live p50 / max, s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (len, clip) in &clips {
        let idle_published = idle
            .iter()
            .find(|(l, _)| l == len)
            .map_or(f64::NAN, |(_, t)| t.published);
        for &load in &loads {
            // Video seconds arriving per second = load x capacity; one upload brings `len`.
            let every = f64::from(*len) / (load * capacity);
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            let mut k = 0u32;
            while f64::from(k) * every < seconds as f64 {
                let at = start + Duration::from_secs_f64(f64::from(k) * every);
                let (client, clip) = (client.clone(), clip.clone());
                tasks.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    live_upload(&client, &clip).await
                });
                k += 1;
            }
            let mut times = Vec::new();
            while let Some(t) = tasks.join_next().await {
                times.push(t??);
            }
            let mut published: Vec<f64> = times.iter().map(|t| t.published).collect();
            let mut high: Vec<f64> = times.iter().map(|t| t.high).collect();
            published.sort_by(f64::total_cmp);
            high.sort_by(f64::total_cmp);
            let p95 = percentile(&published, 0.95);
            println!(
                "| {len} s | {:.0}% | {} | {:.2} / {:.2} / {:.2} | {:.2} | {:.1} / {:.1} |",
                load * 100.0,
                times.len(),
                percentile(&published, 0.5),
                p95,
                published.last().copied().unwrap_or(f64::NAN),
                p95 / idle_published,
                percentile(&high, 0.5),
                high.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    drop(workers);
    stack.stop().await;

    // Full-speed uploads of a standard input: the instant tier, then the ladder.
    println!();
    println!(
        "| clip | full-speed upload, instant publish | last chunk -> published, s | live tier then | last chunk -> fast ladder live, s |"
    );
    println!("| --- | --- | ---: | --- | ---: |");
    for instant in [true, false] {
        let setting = if instant { "true" } else { "false" };
        let stack =
            BenchStack::start_with("fast,high", &[("VTX_INSTANT_PUBLISH", setting)]).await?;
        let workers = stack.workers(2).await?;
        for (len, clip) in &clips {
            let report = stack
                .client
                .upload_video(clip, &Default::default(), &|_, _| {})
                .await?;
            let t0 = report.last_chunk_stored;
            stack.wait_published(report.completed.video_id).await?;
            let published = t0.elapsed().as_secs_f64();
            let tier = stack
                .client
                .video(report.completed.video_id)
                .await?
                .live_tier
                .unwrap_or_default();
            wait_tier(&stack.client, report.completed.video_id, &["fast", "high"]).await?;
            println!(
                "| {len} s | {} | {published:.2} | {tier} | {:.1} |",
                if instant { "on" } else { "off" },
                t0.elapsed().as_secs_f64()
            );
            // The high tier too, so that the next upload starts on an idle box.
            wait_tier(&stack.client, report.completed.video_id, &["high"]).await?;
        }
        drop(workers);
        stack.stop().await;
    }
    Ok(())
}

/// A live upload of `clip`; the times after its last chunk until published and until the
/// high tier is live.
async fn live_upload(client: &vtx_client::Client, clip: &Path) -> anyhow::Result<Times> {
    let opts = vtx_client::UploadOptions {
        live: true,
        ..Default::default()
    };
    let report = client.upload_video(clip, &opts, &|_, _| {}).await?;
    let video = report.completed.video_id;
    let t0 = report.last_chunk_stored;
    wait_tier(client, video, &["instant", "fast", "high"]).await?;
    let published = t0.elapsed().as_secs_f64();
    wait_tier(client, video, &["high"]).await?;
    Ok(Times {
        published,
        high: t0.elapsed().as_secs_f64(),
    })
}

/// Polls every 50 ms until the video's live tier is one of `tiers`.
async fn wait_tier(
    client: &vtx_client::Client,
    video: vtx_domain::VideoId,
    tiers: &[&str],
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(3600);
    loop {
        let v = client.video(video).await?;
        if v.live_tier.as_deref().is_some_and(|t| tiers.contains(&t)) {
            return Ok(());
        }
        if v.state.as_str() == "failed" {
            bail!("video failed: {:?}", v.error);
        }
        anyhow::ensure!(Instant::now() < until, "{tiers:?} not live within an hour");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds the processes `pids` have used.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu_seconds(*p)).sum()
}

/// The value below which a share `q` of the sorted `values` falls (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The shared 720p clip as a phone records it at 640x360: a keyframe every second, AAC.
fn phone_like_360(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("bbb-360-gop1s.mp4");
    let args = [
        "-i",
        &shared_clip("bigbuckbunny.mp4").to_string_lossy(),
        "-vf",
        "scale=640:360",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "21",
        "-g",
        "25",
        "-keyint_min",
        "25",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        &out.to_string_lossy(),
    ]
    .map(String::from);
    ffmpeg(&args)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.95), 19.0);
        assert_eq!(percentile(&v[..1], 0.95), 1.0);
    }
}
