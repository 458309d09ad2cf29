//! Price changes, fanned out to every watcher of every replica.
//!
//! A change is staged as a `PriceChanged` event in the outbox in the
//! transaction that makes it ([`event`]), so it reaches the broker even if
//! the broker is down at that moment; each replica consumes those events
//! from an exclusive queue of its own into its local feed, so a watcher
//! connected to one replica sees a change made through another. The replica
//! that made the change also tells its own watchers at once; watchers skip
//! a version they have seen, so hearing twice changes nothing.

use std::sync::Arc;

use lapin::Connection;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use shop_common::amqp::{Broker, exclusive_consumer};
use shop_common::events::{self, Envelope, Outgoing};
use tokio::sync::broadcast;

use crate::catalog::Product;

pub const EVENT_TYPE: &str = "PriceChanged";

/// The `data` of a `PriceChanged` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceChange {
    pub product_id: String,
    pub price_cents: i64,
    pub currency: String,
    /// The product's version after the change; watchers skip older ones.
    pub version: i64,
    /// Unix milliseconds.
    pub changed_at: i64,
}

impl PriceChange {
    pub fn of(p: &Product) -> Self {
        PriceChange {
            product_id: p.id.clone(),
            price_cents: p.price_cents,
            currency: p.currency.clone(),
            version: p.version,
            changed_at: p.updated_at,
        }
    }
}

/// The `PriceChanged` event announcing `product`'s price, for the outbox.
pub fn event(product: &Product) -> Option<Outgoing> {
    Outgoing::event(&Envelope::new(EVENT_TYPE, PriceChange::of(product))).ok()
}

#[derive(Clone)]
pub struct PriceFeed {
    local: broadcast::Sender<PriceChange>,
}

impl PriceFeed {
    pub async fn new(broker: Option<&Broker>) -> lapin::Result<PriceFeed> {
        let feed = PriceFeed {
            local: broadcast::channel(256).0,
        };
        if let Some(broker) = broker {
            let local = feed.local.clone();
            broker
                .on_connect(move |conn: Arc<Connection>| {
                    let local = local.clone();
                    Box::pin(async move { consume_changes(&conn, local).await })
                })
                .await?;
        }
        Ok(feed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PriceChange> {
        self.local.subscribe()
    }

    /// Tells this replica's watchers about `product`'s new price (the
    /// outbox tells the others).
    pub fn announce(&self, product: &Product) {
        // No receivers is fine: nobody is watching.
        let _ = self.local.send(PriceChange::of(product));
    }
}

/// An exclusive queue for this replica, bound to every `PriceChanged`.
async fn consume_changes(
    conn: &Connection,
    local: broadcast::Sender<PriceChange>,
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    events::declare_exchange(&channel).await?;
    let (queue, mut consumer) = exclusive_consumer(&channel).await?;
    channel
        .queue_bind(
            queue,
            events::EXCHANGE.into(),
            EVENT_TYPE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(Ok(delivery)) = consumer.next().await {
            match serde_json::from_slice::<Envelope<PriceChange>>(&delivery.data) {
                Ok(event) => {
                    let _ = local.send(event.data);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed PriceChanged event"),
            }
        }
    });
    Ok(())
}
