//! RabbitMQ through lapin. Durable quorum queues, persistent messages, publisher confirms, and
//! manual acks that the handler gives only after its database commit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use vtx_domain::Task;
use vtx_domain::messages::queue;

use crate::config::Secret;

/// Every logical queue, declared at start-up.
pub const QUEUES: [&str; 2] = [queue::JOBS, queue::TRANSCODE];

/// One live connection with a confirm-mode channel for publishing.
pub struct Broker {
    conn: Connection,
    publisher: Channel,
    prefix: String,
}

impl Broker {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let broker = Broker {
            conn,
            publisher,
            prefix: prefix.to_string(),
        };
        broker.declare_topology().await?;
        Ok(broker)
    }

    pub fn queue_name(&self, logical: &str) -> String {
        format!("{}.{}", self.prefix, logical)
    }

    async fn declare_topology(&self) -> anyhow::Result<()> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        for q in QUEUES {
            self.publisher
                .queue_declare(
                    self.queue_name(q).as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args.clone(),
                )
                .await?;
        }
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Publishes a persistent message and waits for the broker's confirm.
    pub async fn publish(&self, task: &Task) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(task)?;
        let confirm = self
            .publisher
            .basic_publish(
                "".into(),
                self.queue_name(task.queue()).as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            anyhow::bail!("broker refused a message for {}", task.queue());
        }
        if confirm.take_message().is_some() {
            anyhow::bail!("no queue took a message for {}", task.queue());
        }
        Ok(())
    }

    /// Ready messages and consumers of a queue (passive declare).
    pub async fn queue_stats(&self, logical: &str) -> anyhow::Result<(u32, u32)> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                self.queue_name(logical).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Deletes this prefix's queues (tests clean up after themselves).
    pub async fn delete_topology(&self) -> anyhow::Result<()> {
        for q in QUEUES {
            self.publisher
                .queue_delete(
                    self.queue_name(q).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// A broker handle shared by a process: reconnects on first use after the connection died.
#[derive(Clone)]
pub struct BrokerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    url: Secret,
    prefix: String,
    current: Mutex<Option<Arc<Broker>>>,
}

impl BrokerClient {
    pub fn new(url: Secret, prefix: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                url,
                prefix: prefix.into(),
                current: Mutex::new(None),
            }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The live connection, opening a new one if there is none.
    pub async fn get(&self) -> anyhow::Result<Arc<Broker>> {
        let mut current = self.inner.current.lock().await;
        if let Some(b) = current.as_ref().filter(|b| b.is_connected()) {
            return Ok(b.clone());
        }
        let b = Arc::new(Broker::connect(self.inner.url.expose(), &self.inner.prefix).await?);
        *current = Some(b.clone());
        Ok(b)
    }

    /// Whether a connection is open now (for readiness), connecting if needed.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.get().await.map(|_| ())
    }
}

/// What a handler decided about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): remove the message.
    Ack,
    /// Not done, may succeed later: put it back after a pause.
    Retry,
}

/// Consumes `logical` until `shutdown`, one delivery at a time per call, reconnecting with
/// backoff when the broker goes away. Once a delivery is taken it is seen through: shutdown stops
/// taking new ones, and an unacked message returns to the queue if the process dies.
pub async fn consume<F, Fut>(
    client: BrokerClient,
    logical: &'static str,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Task) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume_once(&client, logical, &shutdown, &handler).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(queue = logical, error = %e, "consumer lost its broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn consume_once<F, Fut>(
    client: &BrokerClient,
    logical: &'static str,
    shutdown: &CancellationToken,
    handler: &F,
) -> anyhow::Result<()>
where
    F: Fn(Task) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let broker = client.get().await?;
    let channel = broker.conn.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            broker.queue_name(logical).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = channel.close(200, "shutting down".into()).await;
                return Ok(());
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
                // A message we cannot read will never become readable: drop it loudly.
                tracing::error!(queue = logical, error = %e, "dropping unreadable message");
                delivery.ack(BasicAckOptions::default()).await?;
                continue;
            }
        };
        match handler(task).await {
            Outcome::Ack => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Outcome::Retry => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
        }
    }
}
