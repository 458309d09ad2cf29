//! Consuming a durable queue without blocking it and without losing
//! anything: every message is acknowledged only once it is handled, or
//! once a copy of it is safely somewhere else.
//!
//! For a queue `q` the broker holds:
//! - `q`, durable, bound to `shop.events` for the event types it wants (or
//!   fed directly, as a work queue), dead-lettering to `q.dlq`;
//! - `q.retry.1` … `q.retry.N`, one per attempt, each holding a message for
//!   its delay (`first_delay × factor^(n-1)`) and then dead-lettering it
//!   back into `q`;
//! - `q.dlq`, the dead-letter queue, where a message that cannot be handled
//!   waits for a human with its reason in the `x-error` header.
//!
//! A handler answers `Ok` (ack), [`Failure::Retry`] (a copy goes to the next
//! retry queue with `x-retry-count` one higher, then the original is acked;
//! after `max_retries` it goes to `q.dlq`) or [`Failure::Reject`] (straight
//! to `q.dlq`). A handler that panics counts as `Retry`. If even the copy
//! cannot be published, the message is nacked: without requeue it goes to
//! `q.dlq` through the queue's dead-letter exchange. So a poison message
//! leaves the queue after a bounded number of attempts and stays in the
//! dead-letter queue; the messages behind it keep flowing.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::de::DeserializeOwned;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::amqp::{Broker, extract_trace};
use crate::events::{self, Envelope};

/// The header that counts how often a message has been retried.
pub const RETRY_COUNT: &str = "x-retry-count";
/// The header that says why a message is in the dead-letter queue.
pub const ERROR: &str = "x-error";

/// How often and how patiently a failed message is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub first_delay: Duration,
    pub factor: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            first_delay: Duration::from_millis(500),
            factor: 4,
        }
    }
}

impl RetryPolicy {
    /// `RETRY_MAX` (default 3) and `RETRY_FIRST_DELAY` (default 500ms); the
    /// delay grows fourfold per retry.
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let default = RetryPolicy::default();
        Ok(RetryPolicy {
            max_retries: env.or("RETRY_MAX", default.max_retries)?,
            first_delay: env.duration_or("RETRY_FIRST_DELAY", default.first_delay)?,
            factor: default.factor,
        })
    }

    /// The delay before retry `n` (from 1).
    pub fn delay(&self, n: u32) -> Duration {
        self.first_delay * self.factor.saturating_pow(n.saturating_sub(1))
    }
}

/// A queue and what it receives.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub queue: String,
    /// Event types bound from `shop.events`; empty for a work queue.
    pub events: Vec<String>,
    /// Messages in flight at once (1 for a strict work queue).
    pub prefetch: u16,
    pub retry: RetryPolicy,
}

impl QueueSpec {
    pub fn dead_letters(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    pub fn retry_queue(&self, n: u32) -> String {
        format!("{}.retry.{n}", self.queue)
    }
}

/// Why a message was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// It may work later (a database or a service was unavailable, a
    /// concurrent change won).
    #[error("{0}")]
    Retry(String),
    /// It never will (malformed, refers to nothing): to the dead-letter queue.
    #[error("{0}")]
    Reject(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Retry(format!("database: {e}"))
    }
}

/// One message as a handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub body: Vec<u8>,
    /// The AMQP message id (an event's `eventId`), if the sender set one.
    pub id: Option<String>,
    pub routing_key: String,
    /// How many times it was retried before this attempt.
    pub retries: u32,
}

impl Message {
    /// The body as an event envelope; malformed is a rejection.
    pub fn envelope<T: DeserializeOwned>(&self) -> Result<Envelope<T>, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Reject(format!("malformed event: {e}")))
    }

    /// The body as JSON of type `T`; malformed is a rejection.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Reject(format!("malformed message: {e}")))
    }
}

/// Declares the queues of `spec` and consumes `spec.queue` on every broker
/// connection from now on.
pub async fn consume<H, Fut>(broker: &Broker, spec: QueueSpec, handler: H) -> lapin::Result<()>
where
    H: Fn(Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let spec = Arc::new(spec);
    broker
        .on_connect(move |conn: Arc<Connection>| {
            let (spec, handler) = (spec.clone(), handler.clone());
            Box::pin(async move {
                let channel = conn.create_channel().await?;
                declare(&channel, &spec).await?;
                channel
                    .basic_qos(spec.prefetch, BasicQosOptions::default())
                    .await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let consumer = channel
                    .basic_consume(
                        spec.queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                tokio::spawn(deliveries(channel, consumer, spec, handler));
                Ok(())
            })
        })
        .await
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The queues of `spec`, durable, with their dead-letter routes.
pub async fn declare(channel: &Channel, spec: &QueueSpec) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead_letters = spec.dead_letters();
    channel
        .queue_declare(dead_letters.as_str().into(), durable, FieldTable::default())
        .await?;
    for n in 1..=spec.retry.max_retries {
        let mut args = FieldTable::default();
        let ttl = spec.retry.delay(n).as_millis().min(i64::MAX as u128) as i64;
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert("x-dead-letter-routing-key".into(), string(&spec.queue));
        channel
            .queue_declare(spec.retry_queue(n).as_str().into(), durable, args)
            .await?;
    }
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(&dead_letters));
    channel
        .queue_declare(spec.queue.as_str().into(), durable, args)
        .await?;
    if !spec.events.is_empty() {
        events::declare_exchange(channel).await?;
    }
    for event in &spec.events {
        channel
            .queue_bind(
                spec.queue.as_str().into(),
                events::EXCHANGE.into(),
                event.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn deliveries<H, Fut>(
    channel: Channel,
    mut consumer: lapin::Consumer,
    spec: Arc<QueueSpec>,
    handler: H,
) where
    H: Fn(Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue = %spec.queue, error = %e, "consumer stopped");
                return;
            }
        };
        let (channel, spec, handler) = (channel.clone(), spec.clone(), handler.clone());
        let span = tracing::info_span!(
            "amqp.consume",
            otel.name = %format!("{} process", spec.queue),
            otel.kind = "consumer",
            messaging.destination.name = %spec.queue,
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        );
        // The publisher's trace continues here.
        let _ = span.set_parent(extract_trace(&delivery.properties));
        tokio::spawn(handle(channel, delivery, spec, handler).instrument(span));
    }
}

async fn handle<H, Fut>(channel: Channel, delivery: Delivery, spec: Arc<QueueSpec>, handler: H)
where
    H: Fn(Message) -> Fut,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let retries = retry_count(&delivery.properties);
    let message = Message {
        body: delivery.data.clone(),
        id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string()),
        routing_key: delivery.routing_key.as_str().to_string(),
        retries,
    };
    let outcome = match AssertUnwindSafe(handler(message)).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::Retry("the handler panicked".into())),
    };
    let settled = match outcome {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(Failure::Retry(reason)) if retries < spec.retry.max_retries => {
            let next = retries + 1;
            tracing::warn!(queue = %spec.queue, retry = next, %reason, "message failed; retrying later");
            let copy = copy_to(&channel, &delivery, &spec.retry_queue(next), next, &reason).await;
            settle_after_copy(&delivery, copy, true).await
        }
        Err(failure) => {
            let reason = match failure {
                Failure::Retry(r) => format!("gave up after {retries} retries: {r}"),
                Failure::Reject(r) => r,
            };
            tracing::warn!(queue = %spec.queue, %reason, "message dead-lettered");
            let copy = copy_to(&channel, &delivery, &spec.dead_letters(), retries, &reason).await;
            settle_after_copy(&delivery, copy, false).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(queue = %spec.queue, error = %e, "settling a message failed; the broker redelivers it");
    }
}

/// Acks once the copy is safe; otherwise nacks: back into the queue for a
/// retry, or (no requeue) through the dead-letter exchange to `q.dlq`.
async fn settle_after_copy(
    delivery: &Delivery,
    copy: Result<(), String>,
    retrying: bool,
) -> lapin::Result<bool> {
    match copy {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(e) => {
            tracing::warn!(error = %e, "copying a failed message failed; nacking it");
            if retrying {
                // Not at once: whatever failed may need a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            delivery
                .nack(BasicNackOptions {
                    requeue: retrying,
                    ..Default::default()
                })
                .await
        }
    }
}

fn retry_count(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get(&ShortString::from(RETRY_COUNT)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => *n,
        _ => 0,
    }
}

/// Publishes a copy of `delivery` (same body, id, type and trace headers)
/// to `queue` with its retry count and the reason, and waits for the confirm.
async fn copy_to(
    channel: &Channel,
    delivery: &Delivery,
    queue: &str,
    retries: u32,
    reason: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        RETRY_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(retries)),
    );
    headers.insert(ERROR.into(), string(reason));
    headers.insert(
        "x-original-routing-key".into(),
        string(delivery.routing_key.as_str()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(format!("no queue {queue}")),
        Confirmation::Nack(_) => Err("the broker refused the copy".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_retry() {
        let p = RetryPolicy {
            max_retries: 3,
            first_delay: Duration::from_millis(100),
            factor: 4,
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(3), Duration::from_millis(1600));
    }

    #[test]
    fn queue_names() {
        let spec = QueueSpec {
            queue: "order_processing".into(),
            events: vec![],
            prefetch: 1,
            retry: RetryPolicy::default(),
        };
        assert_eq!(spec.dead_letters(), "order_processing.dlq");
        assert_eq!(spec.retry_queue(2), "order_processing.retry.2");
    }

    #[test]
    fn the_retry_count_is_read_from_any_integer_header() {
        let with = |v: AMQPValue| {
            let mut h = FieldTable::default();
            h.insert(RETRY_COUNT.into(), v);
            BasicProperties::default().with_headers(h)
        };
        assert_eq!(retry_count(&BasicProperties::default()), 0);
        assert_eq!(retry_count(&with(AMQPValue::LongLongInt(2))), 2);
        assert_eq!(retry_count(&with(AMQPValue::LongInt(3))), 3);
        assert_eq!(retry_count(&with(AMQPValue::LongString("x".into()))), 0);
    }
}
