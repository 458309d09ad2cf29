//! Domain events on the topic exchange `shop.events`: the routing key is the
//! event type, the body an [`Envelope`], the trace context in the headers,
//! the message persistent, and a publish counts only once the broker has
//! confirmed it. Services do not publish directly: they stage an
//! [`Outgoing`] message in their outbox (`crate::outbox`), in the same
//! transaction as the change it announces, and the relay publishes it.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::amqp::Broker;
use crate::telemetry;

pub const EXCHANGE: &str = "shop.events";

/// The version every event of the shop carries today.
pub const VERSION: &str = "1.0";

/// `{eventId, eventType, version, timestamp, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope<T> {
    /// Unique per event; consumers deduplicate on it.
    pub event_id: Uuid,
    /// Also the routing key.
    pub event_type: String,
    /// The schema version of `data`.
    pub version: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub data: T,
}

impl<T> Envelope<T> {
    pub fn new(event_type: &str, data: T) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            version: VERSION.to_string(),
            timestamp: crate::db::rfc3339(crate::db::now_millis()),
            data,
        }
    }
}

/// A message on its way to the broker, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The AMQP message id: an event's `eventId`.
    pub id: String,
    /// `shop.events`, or `""` (the default exchange) for a work queue.
    pub exchange: String,
    pub routing_key: String,
    /// The AMQP `type`: the event type.
    pub kind: String,
    pub body: Vec<u8>,
    /// The trace context of the span that made the message (`traceparent`, …).
    pub headers: Vec<(String, String)>,
}

impl Outgoing {
    /// An event for `shop.events`, carrying the current trace context.
    pub fn event<T: Serialize>(event: &Envelope<T>) -> Result<Outgoing, serde_json::Error> {
        Ok(Outgoing {
            id: event.event_id.to_string(),
            exchange: EXCHANGE.to_string(),
            routing_key: event.event_type.clone(),
            kind: event.event_type.clone(),
            body: serde_json::to_vec(event)?,
            headers: telemetry::current_context_fields(),
        })
    }

    /// A message for one work queue (through the default exchange).
    pub fn to_queue<T: Serialize>(
        queue: &str,
        kind: &str,
        id: &str,
        body: &T,
    ) -> Result<Outgoing, serde_json::Error> {
        Ok(Outgoing {
            id: id.to_string(),
            exchange: String::new(),
            routing_key: queue.to_string(),
            kind: kind.to_string(),
            body: serde_json::to_vec(body)?,
            headers: telemetry::current_context_fields(),
        })
    }

    /// Sent straight to a queue: a queue that does not exist is an error,
    /// not a message silently dropped.
    fn is_direct(&self) -> bool {
        self.exchange.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
    #[error("no queue {0} to take the message")]
    Unroutable(String),
    #[error("not connected to the broker")]
    NotConnected,
}

/// Declares the durable topic exchange and puts `channel` in confirm mode.
pub async fn prepare_publisher(channel: &Channel) -> lapin::Result<()> {
    declare_exchange(channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
}

pub async fn declare_exchange(channel: &Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Sends `message` (persistent) on a confirm-mode channel; the broker's
/// confirm is awaited with [`confirmed`], so many can be in flight at once.
pub async fn send(channel: &Channel, message: &Outgoing) -> lapin::Result<PublisherConfirm> {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(
            name.as_str().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message.id.as_str().into())
        .with_type(message.kind.as_str().into())
        .with_headers(headers);
    channel
        .basic_publish(
            message.exchange.as_str().into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: message.is_direct(),
                ..Default::default()
            },
            &message.body,
            props,
        )
        .await
}

/// Waits for the confirm of a message [`send`] sent.
pub async fn confirmed(confirm: PublisherConfirm, message: &Outgoing) -> Result<(), PublishError> {
    match confirm.await? {
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        // Returned: mandatory and no queue took it.
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(message.routing_key.clone())),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
    }
}

/// Sends and waits for the broker's confirm.
pub async fn publish(channel: &Channel, message: &Outgoing) -> Result<(), PublishError> {
    let confirm = send(channel, message).await?;
    confirmed(confirm, message).await
}

/// A confirm-mode channel with the exchange declared, remade on every new
/// broker connection.
#[derive(Clone)]
pub struct Publisher {
    channel: Arc<watch::Sender<Option<Channel>>>,
}

impl Publisher {
    pub async fn new(broker: &Broker) -> lapin::Result<Publisher> {
        let publisher = Publisher {
            channel: Arc::new(watch::channel(None).0),
        };
        let slot = publisher.channel.clone();
        broker
            .on_connect(move |conn: Arc<Connection>| {
                let slot = slot.clone();
                Box::pin(async move {
                    let channel = conn.create_channel().await?;
                    prepare_publisher(&channel).await?;
                    slot.send_replace(Some(channel));
                    Ok(())
                })
            })
            .await?;
        Ok(publisher)
    }

    /// The channel, if connected now.
    pub fn channel(&self) -> Option<Channel> {
        self.channel
            .borrow()
            .clone()
            .filter(|c| c.status().connected())
    }

    /// The channel, waiting up to `timeout` for a connection.
    pub async fn wait(&self, timeout: Duration) -> Option<Channel> {
        let mut rx = self.channel.subscribe();
        let ready = rx.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let e = Envelope::new("PriceChanged", serde_json::json!({"productId": "prod_001"}));
        let json = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["data", "eventId", "eventType", "timestamp", "version"]
        );
        assert_eq!(json["eventType"], "PriceChanged");
        assert_eq!(json["version"], "1.0");
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
        let back: Envelope<serde_json::Value> = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_event_goes_to_the_exchange_under_its_type() {
        let e = Envelope::new("OrderCreated", serde_json::json!({"orderId": "ord_1"}));
        let m = Outgoing::event(&e).unwrap();
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str(), m.kind.as_str()),
            (EXCHANGE, "OrderCreated", "OrderCreated")
        );
        assert_eq!(m.id, e.event_id.to_string());
        assert!(!m.is_direct());
        let q = Outgoing::to_queue("order_processing", "FulfilOrder", "f1", &1).unwrap();
        assert!(q.is_direct());
        assert_eq!(q.routing_key, "order_processing");
    }
}
