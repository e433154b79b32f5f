//! `vtx bench status`: the status API under a fixed request rate (open loop: requests leave on
//! schedule whether or not earlier ones answered, as polling clients do), for a published
//! video with its high tier, against one `vtx gateway` process; the load generator runs on the
//! same machine. Prints latency percentiles per rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BenchStack;

pub async fn status(seconds: u64, rates: Vec<u32>) -> anyhow::Result<()> {
    let stack = BenchStack::start("fast,high").await?;
    let workers = stack.workers(1).await?;
    let clip = super::shared_clip("bikes.mp4");
    let done = stack
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await?;
    stack
        .client
        .wait_for_tier(done.video_id, "high", Duration::from_secs(600))
        .await?;
    // The workers are done: the machine is the gateway's, PostgreSQL's and the load's.
    drop(workers);
    let (_gateway, client) = stack.gateway_process().await?;
    let token = stack.service_token()?;
    let url = format!("{}/v1/videos/{}", client.base(), done.video_id);
    // The client's own HTTP client (many connections: the load is open loop).
    let http = client.http().clone();
    // Warm the connections and the database's caches.
    let mut etag = String::new();
    for _ in 0..200 {
        let r = http.get(&url).bearer_auth(&token).send().await?;
        if let Some(tag) = r.headers().get(reqwest::header::ETAG) {
            etag = tag.to_str()?.to_owned();
        }
        r.bytes().await?;
    }
    anyhow::ensure!(!etag.is_empty(), "the status API sent no ETag");
    println!(
        "### Status API under a fixed request rate (one gateway process, `GET /v1/videos/{{id}}`)"
    );
    println!();
    println!(
        "| reads | rate req/s | sent | answered/s | errors | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // Every rate twice: full reads, then revalidations with the ETag (304, no body).
    let runs = rates.iter().flat_map(|&rate| {
        [
            ("full", rate, None),
            ("If-None-Match", rate, Some(etag.clone())),
        ]
    });
    for (reads, rate, if_none_match) in runs {
        let total = u64::from(rate) * seconds;
        let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..total {
            tick.tick().await;
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            let (latencies, errors) = (latencies.clone(), errors.clone());
            let if_none_match = if_none_match.clone();
            tasks.spawn(async move {
                let t0 = Instant::now();
                let mut request = http.get(&url).bearer_auth(&token);
                if let Some(tag) = &if_none_match {
                    request = request.header(reqwest::header::IF_NONE_MATCH, tag);
                }
                let expected = if if_none_match.is_some() {
                    reqwest::StatusCode::NOT_MODIFIED
                } else {
                    reqwest::StatusCode::OK
                };
                let ok = match request.send().await {
                    Ok(r) if r.status() == expected => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    latencies.lock().unwrap().push(t0.elapsed());
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let wall = started.elapsed().as_secs_f64();
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let q = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "| {reads} | {rate} | {total} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.len() as f64 / wall,
            errors.load(std::sync::atomic::Ordering::Relaxed),
            q(0.50),
            q(0.90),
            q(0.99),
            l.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        );
    }
    Ok(())
}
