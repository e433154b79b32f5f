//! Health of a service process, for probes: liveness (every service loop is making progress)
//! and readiness (PostgreSQL, RabbitMQ and S3 answer).
//!
//! Each long-running loop holds a [`Beat`] from [`watch`] and calls [`Beat::beat`] as it goes
//! (the consumers before waiting for a delivery, while idle, and after each task). A loop
//! silent for longer than its allowance (a task's own deadline plus a margin) is stuck; a loop
//! whose task panicked is dead. Either makes `/healthz` answer 503, so the orchestrator
//! restarts the process. A loop that ends normally (at shutdown) leaves the registry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::broker::BrokerClient;
use crate::storage::ObjectStore;

struct Loop {
    name: &'static str,
    allowance: Duration,
    /// Milliseconds since [`epoch`] at the last beat.
    last: AtomicU64,
    died: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn registry() -> &'static Mutex<Vec<Arc<Loop>>> {
    static LOOPS: OnceLock<Mutex<Vec<Arc<Loop>>>> = OnceLock::new();
    LOOPS.get_or_init(Mutex::default)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// One loop's heartbeat. Dropped normally, the loop leaves the registry; dropped while its
/// thread panics (the loop's task died), it stays, reported dead.
pub struct Beat(Arc<Loop>);

/// Registers a loop named `name` that beats at least every `allowance`.
pub fn watch(name: &'static str, allowance: Duration) -> Beat {
    let l = Arc::new(Loop {
        name,
        allowance,
        last: AtomicU64::new(now_ms()),
        died: AtomicBool::new(false),
    });
    registry().lock().expect("not poisoned").push(l.clone());
    Beat(l)
}

impl Beat {
    pub fn beat(&self) {
        self.0.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.died.store(true, Ordering::Relaxed);
            return;
        }
        registry()
            .lock()
            .expect("not poisoned")
            .retain(|l| !Arc::ptr_eq(l, &self.0));
    }
}

/// Liveness: whether every registered loop is alive, and the report `/healthz` shows.
pub fn liveness() -> (bool, Value) {
    let now = now_ms();
    let loops = registry().lock().expect("not poisoned");
    let mut ok = true;
    let report: Vec<Value> = loops
        .iter()
        .map(|l| {
            let silent = Duration::from_millis(now.saturating_sub(l.last.load(Ordering::Relaxed)));
            let state = if l.died.load(Ordering::Relaxed) {
                "dead"
            } else if silent > l.allowance {
                "stuck"
            } else {
                "ok"
            };
            ok &= state == "ok";
            json!({
                "loop": l.name,
                "state": state,
                "silent_secs": silent.as_secs(),
                "allowance_secs": l.allowance.as_secs(),
            })
        })
        .collect();
    (
        ok,
        json!({ "status": if ok { "ok" } else { "unhealthy" }, "loops": report }),
    )
}

/// What readiness checks: the three dependencies a service process needs.
#[derive(Clone)]
pub struct Dependencies {
    pub pool: PgPool,
    pub broker: BrokerClient,
    pub store: ObjectStore,
}

impl Dependencies {
    /// Readiness: PostgreSQL, RabbitMQ and S3 each answer within 3 s; the report `/readyz`
    /// shows.
    pub async fn readiness(&self) -> (bool, Value) {
        let timeout = Duration::from_secs(3);
        let (db, mq, s3) = tokio::join!(
            tokio::time::timeout(timeout, async {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
            tokio::time::timeout(timeout, async {
                self.broker.check().await.map_err(|e| e.to_string())
            }),
            tokio::time::timeout(timeout, async {
                self.store.check().await.map_err(|e| e.to_string())
            }),
        );
        let report = |what: &str, r: Result<Result<(), String>, _>| match r {
            Ok(Ok(())) => ("ok", true),
            Ok(Err(e)) => {
                tracing::warn!(dependency = what, error = %e, "readiness check failed");
                ("unavailable", false)
            }
            Err(_) => ("timeout", false),
        };
        let (db, db_ok) = report("postgres", db);
        let (mq, mq_ok) = report("rabbitmq", mq);
        let (s3, s3_ok) = report("s3", s3);
        let ok = db_ok && mq_ok && s3_ok;
        (
            ok,
            json!({
                "status": if ok { "ready" } else { "not-ready" },
                "checks": { "postgres": db, "rabbitmq": mq, "s3": s3 },
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(name: &str) -> Option<String> {
        let (_, report) = liveness();
        report["loops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["loop"] == name)
            .map(|l| l["state"].as_str().unwrap().to_string())
    }

    #[test]
    fn a_silent_loop_is_stuck_a_panicked_one_dead_an_ended_one_gone() {
        let quick = watch("test-quick", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(state_of("test-quick").as_deref(), Some("stuck"));
        let steady = watch("test-steady", Duration::from_secs(60));
        steady.beat();
        assert_eq!(state_of("test-steady").as_deref(), Some("ok"));
        drop(quick);
        assert_eq!(state_of("test-quick"), None);
        let died = std::thread::spawn(|| {
            let _beat = watch("test-died", Duration::from_secs(60));
            panic!("the loop's task panics");
        })
        .join();
        assert!(died.is_err());
        assert_eq!(state_of("test-died").as_deref(), Some("dead"));
        assert!(!liveness().0);
        drop(steady);
    }
}
