//! Consuming a queue: deliveries handed to a handler, settled by its outcome, the consumer
//! restarted with backoff when its connection is lost.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use vtx_domain::Task;

/// Deliveries after which RabbitMQ dead-letters a message by itself: a safety net only.
/// Handlers bound retries through attempts kept in PostgreSQL and retry transient failures in
use super::*;

/// What a handler decided about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): remove the message.
    Ack,
    /// Not done, may succeed later: run the handler again on the same delivery after a backoff.
    /// The message is not requeued, so a dependency's outage costs no delivery count.
    Retry,
    /// Given up for good (the job is already marked failed): move the message to the
    /// dead-letter queue for an operator.
    DeadLetter,
}

/// Backoff before retry `n` (1-based): 0.5 s doubling, at most 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(30))
}

/// Consumes `logical` until `shutdown`, one delivery at a time per call, reconnecting with
/// backoff when the broker goes away. Once a delivery is taken it is seen through: shutdown
/// stops taking new ones, hands back one that is waiting to retry, and an unacked message
/// returns to the queue if the process dies.
///
/// `allowance` is the longest one task may take: a consumer silent for longer is stuck, and
/// the process's `/healthz` says so.
pub async fn consume<F, Fut>(
    client: BrokerClient,
    logical: &'static str,
    prefetch: u16,
    allowance: Duration,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Task) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let beat = crate::health::watch(logical, allowance);
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        beat.beat();
        match consume_once(&client, logical, prefetch, &shutdown, &handler, &beat).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(queue = logical, error = %e, "consumer lost its broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures).min(Duration::from_secs(5))) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn consume_once<F, Fut>(
    client: &BrokerClient,
    logical: &'static str,
    prefetch: u16,
    shutdown: &CancellationToken,
    handler: &F,
    beat: &crate::health::Beat,
) -> anyhow::Result<()>
where
    F: Fn(Task) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let broker = client.get().await?;
    let (channel, mut consumer) = broker
        .exchange("starting a consumer", async {
            let channel = broker.conn.create_channel().await?;
            channel
                .basic_qos(prefetch.max(1), BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    broker.queue_name(logical).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, consumer))
        })
        .await?;
    let close = |why: &'static str| {
        let channel = channel.clone();
        async move {
            let _ = tokio::time::timeout(BROKER_TIMEOUT, channel.close(200, why.into())).await;
        }
    };
    // A consumer whose connection died does not always see its stream end (amqp-rs/lapin#283):
    // check the connection now and then while idle.
    let mut liveness = tokio::time::interval(Duration::from_secs(5));
    loop {
        beat.beat();
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => {
                close("shutting down").await;
                return Ok(());
            }
            _ = liveness.tick() => {
                beat.beat();
                if !broker.is_connected() {
                    anyhow::bail!("connection to RabbitMQ lost");
                }
                continue;
            }
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("consumer stream ended"),
        };
        let task: Task = match serde_json::from_slice(&delivery.data) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(queue = logical, error = %e, "unreadable message; dead-lettering it");
                nack(&broker, &delivery, false).await?;
                continue;
            }
        };
        let mut tries = 0u32;
        loop {
            beat.beat();
            match handler(task.clone()).await {
                Outcome::Ack => {
                    broker
                        .exchange("acking", async {
                            Ok(delivery.ack(BasicAckOptions::default()).await?)
                        })
                        .await?;
                    break;
                }
                Outcome::DeadLetter => {
                    nack(&broker, &delivery, false).await?;
                    break;
                }
                Outcome::Retry => {
                    tries += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(tries)) => {}
                        _ = shutdown.cancelled() => {
                            // Hand it back for another worker.
                            nack(&broker, &delivery, true).await?;
                            close("shutting down").await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Refuses a delivery: back to its queue (`requeue`) or to the dead letters.
async fn nack(
    broker: &Broker,
    delivery: &lapin::message::Delivery,
    requeue: bool,
) -> anyhow::Result<()> {
    let what = if requeue {
        "handing a message back"
    } else {
        "dead-lettering"
    };
    broker
        .exchange(what, async {
            Ok(delivery
                .nack(BasicNackOptions {
                    requeue,
                    ..BasicNackOptions::default()
                })
                .await?)
        })
        .await
        .map(|_| ())
}
