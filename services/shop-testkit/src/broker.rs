//! Looking at the broker from a test: every event on `shop.events`, the
//! messages of a queue, a raw message sent where a service would not send it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// One message as a test sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    pub body: serde_json::Value,
    /// The raw body, for messages that are not JSON.
    pub raw: Vec<u8>,
    /// String and integer headers, as text.
    pub headers: BTreeMap<String, String>,
}

impl Seen {
    fn of(routing_key: &str, data: &[u8], properties: &BasicProperties) -> Seen {
        let mut headers = BTreeMap::new();
        if let Some(table) = properties.headers() {
            for (k, v) in table.inner() {
                let text = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.as_str().to_string(),
                    AMQPValue::LongLongInt(n) => n.to_string(),
                    AMQPValue::LongInt(n) => n.to_string(),
                    _ => continue,
                };
                headers.insert(k.as_str().to_string(), text);
            }
        }
        Seen {
            routing_key: routing_key.to_string(),
            body: serde_json::from_slice(data).unwrap_or(serde_json::Value::Null),
            raw: data.to_vec(),
            headers,
        }
    }
}

async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to the test broker {url}: {e}"));
    let channel = conn.create_channel().await.expect("a channel");
    (conn, channel)
}

/// Every event published on `shop.events` while it lives (a durable queue
/// of its own bound to `#`, so a broker restart loses nothing it holds;
/// a delivery in flight at the restart may be seen twice).
pub struct Tap {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    url: String,
    queue: String,
}

impl Tap {
    pub async fn start(url: &str) -> Tap {
        let tap = Tap {
            seen: Arc::default(),
            url: url.to_string(),
            queue: format!("tap.{}", uuid::Uuid::new_v4().simple()),
        };
        let (_conn, channel) = connect(url).await;
        channel
            .exchange_declare(
                "shop.events".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declaring shop.events");
        channel
            .queue_declare(
                tap.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declaring the tap queue");
        channel
            .queue_bind(
                tap.queue.as_str().into(),
                "shop.events".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("binding the tap queue");
        tokio::spawn(tap_loop(
            tap.url.clone(),
            tap.queue.clone(),
            tap.seen.clone(),
        ));
        tap
    }

    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The events of one type.
    pub fn of_type(&self, event_type: &str) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| e.routing_key == event_type)
            .collect()
    }

    /// Waits up to `timeout` until `done` holds for the events seen.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.events()) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Consumes the tap queue, reconnecting after a broker restart.
async fn tap_loop(url: String, queue: String, seen: Arc<Mutex<Vec<Seen>>>) {
    loop {
        if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await
            && let Ok(channel) = conn.create_channel().await
            && let Ok(mut consumer) = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        {
            // Acked once recorded: a broker restart redelivers what was in
            // flight (a copy may be seen twice) rather than dropping it.
            while let Some(Ok(d)) = consumer.next().await {
                seen.lock()
                    .unwrap()
                    .push(Seen::of(d.routing_key.as_str(), &d.data, &d.properties));
                let _ = d.ack(lapin::options::BasicAckOptions::default()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes every message waiting in `queue` (they leave it).
pub async fn drain(url: &str, queue: &str) -> Vec<Seen> {
    let (_conn, channel) = connect(url).await;
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(Seen::of(
            m.delivery.routing_key.as_str(),
            &m.delivery.data,
            &m.delivery.properties,
        ));
    }
    out
}

/// How many messages wait in `queue`.
pub async fn depth(url: &str, queue: &str) -> u32 {
    let (_conn, channel) = connect(url).await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}

/// Publishes `body` as it is to `exchange` with `routing_key` (persistent,
/// with a message id), as a misbehaving publisher would.
pub async fn publish_raw(url: &str, exchange: &str, routing_key: &str, id: &str, body: &[u8]) {
    let (_conn, channel) = connect(url).await;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into())
                .with_content_type("application/json".into()),
        )
        .await
        .expect("publishing")
        .await
        .expect("the broker's confirm");
}
