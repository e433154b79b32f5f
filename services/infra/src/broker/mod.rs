//! RabbitMQ through lapin. Durable quorum queues per task class with a dead-letter exchange,
//! persistent messages, publisher confirms, and manual acks given only after the handler's
//! database commit.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use vtx_domain::Task;
use vtx_domain::messages::queue;

use crate::config::{ExtraRoots, Secret};

mod consume;
pub use consume::{Outcome, backoff, consume};

/// Deliveries after which RabbitMQ dead-letters a message by itself: a safety net only.
/// Handlers bound retries through attempts kept in PostgreSQL and retry transient failures in
/// place, so a dependency's outage does not count against this.
pub const DELIVERY_LIMIT: i64 = 20;

/// How long any one exchange with the broker may take (connect, publish and its confirm, ack,
/// declare). A broker that goes away mid-exchange can leave lapin's future pending forever
/// (amqp-rs/lapin#409: a publish hangs when the server closes the connection), so every await
/// on the broker is bounded; a connection that timed out once is not used again.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(20);

/// One live connection with a confirm-mode channel for publishing.
pub struct Broker {
    conn: Connection,
    publisher: Channel,
    prefix: String,
    /// Set when an exchange on this connection timed out: it is replaced on next use.
    broken: AtomicBool,
}

impl Broker {
    /// Connects to `url` (`amqp://`, or `amqps://` trusting the system's roots and `roots`).
    pub async fn connect(url: &str, prefix: &str, roots: &ExtraRoots) -> anyhow::Result<Self> {
        bounded("connecting", async {
            let tls = OwnedTLSConfig {
                identity: None,
                cert_chain: roots.pem().map(str::to_string),
            };
            let conn = Connection::connect_with_config(
                url,
                ConnectionProperties::default(),
                tls,
                lapin::runtime::default_runtime()?,
            )
            .await?;
            let publisher = conn.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let broker = Broker {
                conn,
                publisher,
                prefix: prefix.to_string(),
                broken: AtomicBool::new(false),
            };
            broker.declare_topology().await?;
            Ok(broker)
        })
        .await
    }

    /// Runs one exchange under `BROKER_TIMEOUT`; a timeout marks this connection broken.
    async fn exchange<T>(
        &self,
        what: &str,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let r = bounded(what, fut).await;
        if let Err(e) = &r
            && e.is::<TimedOut>()
        {
            self.broken.store(true, Ordering::Relaxed);
        }
        r
    }

    pub fn queue_name(&self, logical: &str) -> String {
        format!("{}.{}", self.prefix, logical)
    }

    fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Durable quorum queues per task class, each dead-lettering into `{prefix}.dead`.
    async fn declare_topology(&self) -> anyhow::Result<()> {
        let quorum = || {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            args
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dlx = self.dead_letter_exchange();
        self.publisher
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let dead = self.queue_name(queue::DEAD);
        self.publisher
            .queue_declare(dead.as_str().into(), durable, quorum())
            .await
            .map_err(|e| topology_error(&dead, e))?;
        self.publisher
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for q in queue::WORK {
            let mut args = quorum();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(dlx.as_str())),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            let name = self.queue_name(q);
            self.publisher
                .queue_declare(name.as_str().into(), durable, args)
                .await
                .map_err(|e| topology_error(&name, e))?;
        }
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn.status().connected() && !self.broken.load(Ordering::Relaxed)
    }

    /// Publishes a persistent message and waits for the broker's confirm.
    pub async fn publish(&self, task: &Task) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(task)?;
        let confirm = self
            .exchange("publishing", async {
                Ok(self
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
                    .await?)
            })
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
        self.exchange("reading queue stats", async {
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
        })
        .await
    }

    /// Takes one message off a queue, if any (operators and tests reading the dead letters).
    pub async fn get_one(&self, logical: &str) -> anyhow::Result<Option<Task>> {
        let msg = self
            .exchange("getting a message", async {
                let ch = self.conn.create_channel().await?;
                let msg = ch
                    .basic_get(
                        self.queue_name(logical).as_str().into(),
                        BasicGetOptions { no_ack: true },
                    )
                    .await?;
                let _ = ch.close(200, "done".into()).await;
                Ok(msg)
            })
            .await?;
        Ok(match msg {
            Some(m) => Some(serde_json::from_slice(&m.delivery.data)?),
            None => None,
        })
    }

    /// Deletes this prefix's queues and exchange (tests clean up after themselves).
    pub async fn delete_topology(&self) -> anyhow::Result<()> {
        self.exchange("deleting queues", async {
            for q in queue::WORK.into_iter().chain([queue::DEAD]) {
                self.publisher
                    .queue_delete(
                        self.queue_name(q).as_str().into(),
                        QueueDeleteOptions::default(),
                    )
                    .await?;
            }
            self.publisher
                .exchange_delete(
                    self.dead_letter_exchange().as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
            Ok(())
        })
        .await
    }
}

/// The broker did not answer within `BROKER_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ did not answer {0} within {BROKER_TIMEOUT:?}")]
pub struct TimedOut(String);

async fn bounded<T>(what: &str, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(BROKER_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(TimedOut(what.to_string()).into()))
}

fn topology_error(queue: &str, e: lapin::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "declaring {queue}: {e}. If it exists from an older vtx with other arguments, delete it \
         (rabbitmqctl delete_queue {queue}) or set another VTX_QUEUE_PREFIX"
    )
}

/// A broker handle shared by a process: reconnects on first use after the connection died.
#[derive(Clone)]
pub struct BrokerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    url: Secret,
    prefix: String,
    roots: ExtraRoots,
    current: Mutex<Option<Arc<Broker>>>,
}

impl BrokerClient {
    pub fn new(url: Secret, prefix: impl Into<String>, roots: ExtraRoots) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                url,
                prefix: prefix.into(),
                roots,
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
        let b = Arc::new(
            Broker::connect(
                self.inner.url.expose(),
                &self.inner.prefix,
                &self.inner.roots,
            )
            .await?,
        );
        *current = Some(b.clone());
        Ok(b)
    }

    /// Whether a connection is open now (for readiness), connecting if needed.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.get().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes the connection and never answers: connecting gives up with
    /// `TimedOut` instead of waiting forever (time is paused, so this takes no real 20 s).
    #[tokio::test(start_paused = true)]
    async fn a_broker_that_never_answers_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
        let _silent = std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(60));
            drop(held);
        });
        let err = match Broker::connect(&url, "never", &ExtraRoots::default()).await {
            Ok(_) => panic!("connected to a silent server"),
            Err(e) => e,
        };
        assert!(err.is::<TimedOut>(), "{err:#}");
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
