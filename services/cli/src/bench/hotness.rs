//! `vtx bench hotness`: play ingest on one gateway, and the top-x query over history.

use super::*;
use std::time::Instant;

/// `vtx bench hotness`: play events ingested by one gateway process (batches of `batch` from
/// `senders` connections for `seconds`), every one counted after the flush; then the top-x
/// query over synthetic history (`videos` videos x `minutes` per-minute counters).
pub async fn hotness(
    seconds: u64,
    batch: usize,
    senders: usize,
    videos: u32,
    minutes: u32,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let stack = BenchStack::start("fast").await?;
    // Published videos to play (rows only: counting plays needs no media).
    sqlx::query(
        "INSERT INTO videos (id, state, source_key, source_bytes, live_tier, published_at)
         SELECT gen_random_uuid(), $2, 'none', 0, $3, now()
         FROM generate_series(1, $1)",
    )
    .bind(i64::from(videos))
    .bind(vtx_domain::VideoState::Published)
    .bind(vtx_domain::Tier::Fast)
    .execute(&stack.pool)
    .await?;
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM videos")
        .fetch_all(&stack.pool)
        .await?;
    let (gateway, client) = stack.gateway_process().await?;
    let pid = gateway.0.id();
    let token = stack.service_token()?;
    // Bodies made up front, so the load generator spends its time sending. Plays are spread
    // over the videos head-heavily, as real traffic is.
    let bodies: Vec<bytes::Bytes> = (0..32)
        .map(|b| {
            let plays: Vec<vtx_domain::api::PlayEvent> = (0..batch)
                .map(|i| {
                    let k = (i * 7919 + b * 104_729) % (ids.len() * ids.len()).max(1);
                    let v = ((k as f64).sqrt() as usize).min(ids.len() - 1);
                    vtx_domain::api::PlayEvent {
                        video_id: ids[v].0.to_string(),
                        at: None,
                        client: None,
                    }
                })
                .collect();
            serde_json::to_vec(&vtx_domain::api::PlaysRequest { plays }).map(bytes::Bytes::from)
        })
        .collect::<Result<_, _>>()?;
    let url = format!("{}/v1/plays", client.base());
    let accepted = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let until = started + std::time::Duration::from_secs(seconds);
    futures_util::future::join_all((0..senders).map(|s| {
        let (http, url, token, bodies) = (client.http().clone(), &url, &token, &bodies);
        let (accepted, failed) = (&accepted, &failed);
        async move {
            let mut i = s;
            while Instant::now() < until {
                let resp = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let body: vtx_domain::api::PlaysAccepted =
                            r.json().await.unwrap_or_default();
                        accepted.fetch_add(u64::from(body.accepted), Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += senders;
            }
        }
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let accepted = accepted.load(Ordering::Relaxed);
    // Every accepted play is counted once the flush has run.
    let flush_until = Instant::now() + std::time::Duration::from_secs(30);
    let counted = loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COALESCE(sum(plays), 0)::bigint FROM play_counts")
                .fetch_one(&stack.pool)
                .await?;
        if n as u64 >= accepted || Instant::now() > flush_until {
            break n as u64;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts")
        .fetch_one(&stack.pool)
        .await?;
    let rss = peak_rss(pid).unwrap_or(0);
    drop(gateway);
    println!("### Play ingest (one gateway process)");
    println!();
    println!(
        "| senders | batch | seconds | plays accepted | failed requests | plays/s | gateway CPU s per 100k plays | counted after flush | rows written | gateway peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {senders} | {batch} | {wall:.1} | {accepted} | {} | {:.0} | {:.2} | {counted} | {} | {} MiB |",
        failed.load(Ordering::Relaxed),
        accepted as f64 / wall,
        cpu / (accepted.max(1) as f64 / 100_000.0),
        rows.0,
        rss >> 20
    );

    // Top-x over synthetic history: `minutes` per-minute counters for every video.
    sqlx::query(
        "INSERT INTO play_counts (video_id, minute, plays)
         SELECT v.id, date_trunc('minute', now()) - make_interval(mins => m),
                (random() * 100)::bigint
         FROM videos v, generate_series(1, $1) m
         ON CONFLICT DO NOTHING",
    )
    .bind(i32::try_from(minutes)?)
    .execute(&stack.pool)
    .await?;
    sqlx::query("ANALYZE play_counts")
        .execute(&stack.pool)
        .await?;
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts")
        .fetch_one(&stack.pool)
        .await?;
    println!();
    println!(
        "### Top-x query ({} videos, {} per-minute rows; then rolled up per hour after 2 h)",
        ids.len(),
        rows.0
    );
    println!();
    println!("| counters | window | x | median ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    top_x_times(&stack.pool, "per minute", minutes).await?;
    let t = Instant::now();
    let (moved, _) = vtx_infra::db::roll_up_plays(
        &stack.pool,
        std::time::Duration::from_secs(7200),
        std::time::Duration::from_secs(minutes as u64 * 60 + 3600),
    )
    .await?;
    let rollup = t.elapsed().as_secs_f64();
    for analyze in ["ANALYZE play_counts", "ANALYZE play_counts_hourly"] {
        sqlx::query(analyze).execute(&stack.pool).await?;
    }
    let hourly: (i64,) = sqlx::query_as("SELECT count(*) FROM play_counts_hourly")
        .fetch_one(&stack.pool)
        .await?;
    top_x_times(&stack.pool, "rolled up", minutes).await?;
    println!();
    println!(
        "Roll-up: {moved} minute rows moved into {} hourly rows in {rollup:.1} s (once; the \
         tracker then moves one hour of minutes per hour).",
        hourly.0
    );
    stack.stop().await;
    Ok(())
}

/// Times the tracker's top-x query over the last hour and over `minutes`, for 100 and 2000.
async fn top_x_times(pool: &sqlx::PgPool, counters: &str, minutes: u32) -> anyhow::Result<()> {
    for (window_min, x) in [
        (60u64, 100u32),
        (60, 2000),
        (u64::from(minutes), 100),
        (u64::from(minutes), 2000),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let top =
                vtx_infra::db::top_videos(pool, std::time::Duration::from_secs(window_min * 60), x)
                    .await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(!top.is_empty(), "no top videos");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {counters} | {window_min} min | {x} | {:.1} | {:.1} |",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    Ok(())
}
