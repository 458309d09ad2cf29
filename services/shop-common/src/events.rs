//! Domain events on the topic exchange `shop.events`: the routing key is the
//! event type, the body an [`Envelope`], the trace context in the headers,
//! the message persistent, and a publish counts only once the broker has
//! confirmed it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::amqp::trace_headers;

pub const EXCHANGE: &str = "shop.events";

/// `{eventId, eventType, version, timestamp, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
    pub fn new(event_type: &str, version: &str, data: T) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            version: version.to_string(),
            timestamp: crate::db::rfc3339(crate::db::now_millis()),
            data,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the event")]
    Nacked,
    #[error("encoding the event: {0}")]
    Encode(#[from] serde_json::Error),
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

/// Publishes and waits for the broker's confirm (the channel must be in
/// confirm mode, see [`prepare_publisher`]).
pub async fn publish<T: Serialize>(
    channel: &Channel,
    event: &Envelope<T>,
) -> Result<(), PublishError> {
    let body = serde_json::to_vec(event)?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.event_id.to_string().into())
        .with_type(event.event_type.as_str().into())
        .with_headers(trace_headers());
    let confirm = channel
        .basic_publish(
            EXCHANGE.into(),
            event.event_type.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let e = Envelope::new(
            "PriceChanged",
            "1.0",
            serde_json::json!({"productId": "prod_001"}),
        );
        let json = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["data", "eventId", "eventType", "timestamp", "version"]
        );
        assert_eq!(json["eventType"], "PriceChanged");
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
        let back: Envelope<serde_json::Value> = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
