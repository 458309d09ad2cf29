//! Price changes, fanned out to every watcher of every replica.
//!
//! With a broker, a change is published as a `PriceChanged` event on
//! `shop.events`, and each replica consumes those events from an exclusive
//! queue of its own into its local feed, so a watcher connected to one
//! replica sees a change made through another. Without a broker (or when a
//! publish fails) the change goes straight into the local feed.

use std::sync::Arc;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::{Deserialize, Serialize};
use shop_common::amqp::{Broker, exclusive_consumer};
use shop_common::events::{self, Envelope};
use tokio::sync::{broadcast, watch};

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

#[derive(Clone)]
pub struct PriceFeed {
    local: broadcast::Sender<PriceChange>,
    /// The confirm-mode channel changes are published on, while connected.
    publisher: Arc<watch::Sender<Option<Channel>>>,
}

impl PriceFeed {
    pub async fn new(broker: Option<&Broker>) -> lapin::Result<PriceFeed> {
        let feed = PriceFeed {
            local: broadcast::channel(256).0,
            publisher: Arc::new(watch::channel(None).0),
        };
        if let Some(broker) = broker {
            let (local, publisher) = (feed.local.clone(), feed.publisher.clone());
            broker
                .on_connect(move |conn: Arc<Connection>| {
                    let (local, publisher) = (local.clone(), publisher.clone());
                    Box::pin(async move {
                        let channel = conn.create_channel().await?;
                        events::prepare_publisher(&channel).await?;
                        consume_changes(&conn, local).await?;
                        publisher.send_replace(Some(channel));
                        Ok(())
                    })
                })
                .await?;
        }
        Ok(feed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PriceChange> {
        self.local.subscribe()
    }

    /// Tells every watcher about `product`'s new price.
    pub async fn announce(&self, product: &Product) {
        let change = PriceChange::of(product);
        let channel = self.publisher.borrow().clone();
        if let Some(channel) = channel.filter(|c| c.status().connected()) {
            match events::publish(&channel, &Envelope::new(EVENT_TYPE, "1.0", &change)).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing a price change failed; telling local watchers only")
                }
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.local.send(change);
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
