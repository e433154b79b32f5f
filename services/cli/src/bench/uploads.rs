//! `vtx bench uploads`: many concurrent upload sessions against one gateway process.

use super::*;
use std::time::Instant;

use vtx_media::Deadline;

/// `vtx bench uploads`: `sessions` concurrent upload sessions on loopback against a `vtx
/// gateway` process, each sending `chunks` GOP-aligned chunks (real MPEG-TS chunks, checked by
/// the gateway as in production). Prints throughput, chunk latency and the gateway's peak RSS.
pub async fn uploads(sessions: usize, chunks: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let src = shared_clip("bikes.mp4");
    let cut = {
        let (src, dir) = (src.clone(), scratch.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            vtx_media::cut_chunks(&src, &dir, 2.0, Deadline::none())
        })
        .await??
    };
    let mut payloads = Vec::new();
    for c in &cut {
        payloads.push(bytes::Bytes::from(std::fs::read(&c.path)?));
    }
    anyhow::ensure!(
        chunks <= payloads.len(),
        "at most {} chunks per session",
        payloads.len()
    );
    let payloads = &payloads[..chunks];
    let per_session: u64 = payloads.iter().map(|p| p.len() as u64).sum();

    let stack = BenchStack::start("fast").await?;
    let (gateway, client) = stack.gateway_process().await?;
    let pid = gateway.0.id();
    let idle_rss = peak_rss(pid).unwrap_or(0);

    // Every session is opened first, then all of them send at once.
    let opened: Vec<_> =
        futures_util::future::try_join_all((0..sessions).map(|_| client.create_upload())).await?;
    let started = Instant::now();
    let latencies = std::sync::Mutex::new(Vec::with_capacity(sessions * chunks));
    let failures = std::sync::atomic::AtomicU64::new(0);
    futures_util::future::join_all(opened.iter().map(|up| {
        let session = client.with_token(up.upload_token.as_str());
        let (latencies, failures) = (&latencies, &failures);
        async move {
            for (i, data) in payloads.iter().enumerate() {
                let t = Instant::now();
                match session.put_chunk(up.id, i as u32, data.clone()).await {
                    Ok(_) => latencies
                        .lock()
                        .expect("latency lock")
                        .push(t.elapsed().as_secs_f64()),
                    Err(e) => {
                        if failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                            eprintln!("chunk failed: {e:#}");
                        }
                    }
                }
            }
        }
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let rss = peak_rss(pid).unwrap_or(0);
    drop(gateway);

    let mut lat = latencies.into_inner().expect("latency lock");
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let bytes = per_session * sessions as u64;
    println!(
        "| sessions | chunks | chunk size | stored | failed | wall s | MB/s | chunks/s | p50 ms | p99 ms | gateway peak RSS (idle) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {sessions} | {} | {} KiB | {} | {} | {wall:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} MiB ({} MiB) |",
        sessions * chunks,
        per_session / chunks as u64 / 1024,
        lat.len(),
        failures.load(std::sync::atomic::Ordering::Relaxed),
        bytes as f64 / wall / 1e6,
        lat.len() as f64 / wall,
        pct(0.5) * 1000.0,
        pct(0.99) * 1000.0,
        rss >> 20,
        idle_rss >> 20,
    );
    stack.stop().await;
    Ok(())
}
