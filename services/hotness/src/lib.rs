//! `vtx hotness`: every period, the top x videos by plays over the window t get an extreme
//! encode (once each), and so do videos whose uploader's follower count predicted them. t and x
//! follow the cluster's load (`vtx_domain::hotness`). Only one tracker acts at a time: it holds
//! a PostgreSQL advisory lock on a connection of its own, so running two is safe (the second
//! waits, and takes over when the first dies).

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use vtx_domain::hotness::{adapt, cluster_load};
use vtx_domain::messages::queue;
use vtx_infra::broker::BrokerClient;
use vtx_infra::config::HotnessConfig;
use vtx_infra::db::{self, ExtremeReason};

/// Key of the advisory lock only the acting tracker holds ("vtxhot").
pub const LOCK_KEY: i64 = 0x7674_7868_6f74;

/// What one period did.
#[derive(Clone, Debug, PartialEq)]
pub struct TickReport {
    pub load: f64,
    pub window_secs: u64,
    pub top: u32,
    /// Extreme encodes requested this period.
    pub queued: u32,
}

#[derive(Clone)]
pub struct Tracker {
    pool: PgPool,
    broker: BrokerClient,
    cfg: HotnessConfig,
}

impl Tracker {
    pub fn new(pool: PgPool, broker: BrokerClient, cfg: HotnessConfig) -> Self {
        Self { pool, broker, cfg }
    }

    /// Takes the lock when it is free, then acts every period until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        // A period's work is a few queries; standing by wakes every 10 s at most.
        let beat = vtx_infra::health::watch(
            "hotness",
            (self.cfg.period * 3).max(Duration::from_secs(300)),
        );
        loop {
            beat.beat();
            match self.lead(&shutdown, &beat).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "hotness tracker: will try again"),
            }
            metrics::gauge!("vtx_hot_leader").set(0.0);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.period.min(Duration::from_secs(10))) => {}
            }
        }
    }

    /// Waits for the lock (on a connection outside the pool, so the lock dies with it), then
    /// acts every period. Returns when shut down; an error gives the lock up.
    async fn lead(
        &self,
        shutdown: &CancellationToken,
        beat: &vtx_infra::health::Beat,
    ) -> anyhow::Result<()> {
        let mut conn: PgConnection = self.pool.acquire().await?.detach();
        loop {
            beat.beat();
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if got {
                break;
            }
            metrics::gauge!("vtx_hot_leader").set(0.0);
            tracing::debug!("another hotness tracker acts; standing by");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.cfg.period.min(Duration::from_secs(10))) => {}
            }
        }
        tracing::info!("hotness tracker acting");
        metrics::gauge!("vtx_hot_leader").set(1.0);
        loop {
            beat.beat();
            match self.tick().await {
                Ok(r) => tracing::info!(
                    load = r.load,
                    window_secs = r.window_secs,
                    top = r.top,
                    queued = r.queued,
                    "hotness period"
                ),
                Err(e) => tracing::warn!(error = %e, "hotness period failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LOCK_KEY)
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(self.cfg.period) => {}
            }
            // Still holding it? A restarted PostgreSQL dropped the session and the lock.
            sqlx::query("SELECT 1").execute(&mut conn).await?;
        }
    }

    /// The cluster's load: ready messages and tasks running on the fast and high queues, per
    /// consumer.
    pub async fn load(&self) -> anyhow::Result<f64> {
        let broker = self.broker.get().await?;
        let (mut ready, mut consumers) = (0u64, 0u64);
        for q in [queue::FAST_SLICES, queue::HIGH_SLICES] {
            let (r, c) = broker.queue_stats(q).await?;
            ready += u64::from(r);
            consumers += u64::from(c);
        }
        let running = db::running_tasks(&self.pool).await?;
        Ok(cluster_load(ready, running, consumers))
    }

    /// One period: measure the load, move t and x, request extreme encodes for the top videos
    /// without one and for predicted ones.
    pub async fn tick(&self) -> anyhow::Result<TickReport> {
        let load = self.load().await?;
        self.tick_at_load(load).await
    }

    /// A period at a given load (what `tick` measured; tests simulate one).
    pub async fn tick_at_load(&self, load: f64) -> anyhow::Result<TickReport> {
        let (window_secs, top) = adapt(load, &self.cfg.bounds);
        metrics::gauge!("vtx_cluster_load").set(if load.is_finite() { load } else { -1.0 });
        metrics::gauge!("vtx_hot_window_seconds").set(window_secs as f64);
        metrics::gauge!("vtx_hot_top").set(f64::from(top));
        // A failed roll-up only leaves minute rows for the next period; picking goes on.
        match db::roll_up_plays(
            &self.pool,
            self.cfg.rollup_after,
            Duration::from_secs(self.cfg.bounds.window_max_secs),
        )
        .await
        {
            Ok((0, 0)) => {}
            Ok((moved, dropped)) => {
                tracing::info!(moved, dropped, "play counters rolled up per hour")
            }
            Err(e) => tracing::warn!(error = %e, "cannot roll play counters up; next period"),
        }
        let mut queued = 0;
        for h in db::top_videos(&self.pool, Duration::from_secs(window_secs), top).await? {
            if h.extreme.is_none()
                && db::request_extreme(&self.pool, h.video, ExtremeReason::Hot, h.plays).await?
            {
                tracing::info!(video = %h.video, plays = h.plays, "hot: extreme encode requested");
                queued += 1;
            }
        }
        // The prediction is made when the high tier goes live; this sweep catches any missed.
        for (video, followers) in
            db::followed_without_extreme(&self.pool, self.cfg.followers_threshold, None).await?
        {
            if db::request_extreme(&self.pool, video, ExtremeReason::Followers, followers).await? {
                queued += 1;
            }
        }
        metrics::counter!("vtx_hot_queued_total").increment(u64::from(queued));
        for (state, n) in db::extreme_counts(&self.pool).await? {
            metrics::gauge!("vtx_extreme_requests", "state" => state.as_str()).set(n as f64);
        }
        Ok(TickReport {
            load,
            window_secs,
            top,
            queued,
        })
    }
}
