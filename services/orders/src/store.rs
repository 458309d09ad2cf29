//! The event store: one append-only stream per order in `order_events`.
//!
//! An append names the version it expects the stream to be at; the primary
//! key `(stream_id, version)` lets only one of two writers that read the
//! same version append the next, and the other gets [`AppendError::Conflict`].
//! In the same transaction the append stages the published events (and any
//! other message) in the outbox and updates the read model, so the three
//! never disagree.

use shop_common::db::{Db, now_millis, rfc3339};
use shop_common::events::{Envelope, Outgoing};
use shop_common::outbox;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::domain::{Order, OrderEvent, apply, replay};
use crate::view;

/// An event as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub event_id: String,
    pub version: i64,
    pub event: OrderEvent,
    /// Unix milliseconds.
    pub recorded_at: i64,
}

impl Recorded {
    /// The event as published on `shop.events`.
    pub fn envelope(&self) -> Envelope<serde_json::Value> {
        Envelope {
            event_id: self.event_id.parse().unwrap_or_default(),
            event_type: self.event.event_type().to_string(),
            version: shop_common::events::VERSION.to_string(),
            timestamp: rfc3339(self.recorded_at),
            data: self.event.data(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the stream of {stream} was at version {actual}, not {expected}")]
    Conflict {
        stream: String,
        expected: i64,
        actual: i64,
    },
    #[error("the stream of {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What else an append writes in its transaction.
#[derive(Debug, Default)]
pub struct AlsoWrite {
    /// Messages to stage besides the published events (e.g. a work item).
    pub messages: Vec<Outgoing>,
    /// Marks a consumed message as handled: `(consumer, message id)`.
    pub handled: Option<(String, String)>,
}

#[derive(Clone)]
pub struct EventStore {
    db: Db,
}

impl EventStore {
    pub fn new(db: Db) -> Self {
        EventStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The events of one order, in order.
    pub async fn stream(&self, order_id: &str) -> Result<Vec<Recorded>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, version, event_type, data, recorded_at FROM order_events \
             WHERE stream_id = $1 ORDER BY version",
        )
        .bind(order_id.to_string())
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| recorded(row).map_err(|e| StoreError::Corrupt(order_id.into(), e)))
            .collect()
    }

    /// The order as its events say (the write side never reads the view).
    pub async fn load(&self, order_id: &str) -> Result<Option<Order>, StoreError> {
        let events = self.stream(order_id).await?;
        replay(events.iter().map(|r| (&r.event, r.recorded_at)))
            .map_err(|e| StoreError::Corrupt(order_id.into(), e))
    }

    /// Appends `event` to the stream of the order whose state is `current`
    /// (`None`: a new stream), stages what is published and `also`, and
    /// projects the new state into the read model, all in one transaction.
    pub async fn append(
        &self,
        order_id: &str,
        current: Option<&Order>,
        event: OrderEvent,
        also: AlsoWrite,
    ) -> Result<Order, StoreError> {
        let expected = current.map_or(0, |o| o.version);
        let recorded = Recorded {
            event_id: Uuid::now_v7().to_string(),
            version: expected + 1,
            event,
            recorded_at: now_millis(),
        };
        let next = apply(current.cloned(), &recorded.event, recorded.recorded_at)
            .map_err(|e| StoreError::Corrupt(order_id.into(), e))?;

        let mut tx = self.db.begin().await?;
        // First the insert, so SQLite takes its write lock before anything is read.
        let inserted = sqlx::query(
            "INSERT INTO order_events (stream_id, version, event_id, event_type, schema_version, data, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order_id.to_string())
        .bind(recorded.version)
        .bind(recorded.event_id.clone())
        .bind(recorded.event.event_type())
        .bind(shop_common::events::VERSION)
        .bind(recorded.event.data().to_string())
        .bind(recorded.recorded_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if shop_common::db::is_unique_violation(&e) => {
                drop(tx);
                let actual = self.version(order_id).await?;
                return Err(StoreError::Conflict {
                    stream: order_id.into(),
                    expected,
                    actual,
                });
            }
            Err(e) => return Err(e.into()),
        }
        if recorded.event.is_published() {
            let message = Outgoing::event(&recorded.envelope())
                .map_err(|e| StoreError::Corrupt(order_id.into(), e.to_string()))?;
            outbox::stage(&mut tx, &message).await?;
        }
        for message in &also.messages {
            outbox::stage(&mut tx, message).await?;
        }
        if let Some((consumer, id)) = &also.handled {
            outbox::first_delivery(&mut tx, consumer, id).await?;
        }
        view::upsert(&mut tx, &next).await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn version(&self, order_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM order_events WHERE stream_id = $1")
            .bind(order_id.to_string())
            .fetch_one(&self.db)
            .await?
            .try_get("v")
    }
}

fn recorded(row: &sqlx::any::AnyRow) -> Result<Recorded, String> {
    let get = |e: sqlx::Error| e.to_string();
    let event_type: String = row.try_get("event_type").map_err(get)?;
    let data: String = row.try_get("data").map_err(get)?;
    Ok(Recorded {
        event_id: row.try_get("event_id").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
        event: OrderEvent::parse(&event_type, &data)?,
        recorded_at: row.try_get("recorded_at").map_err(get)?,
    })
}

/// Every stream, one at a time in id order, inside `tx` (for a rebuild).
pub async fn all_streams(tx: &mut AnyConnection) -> Result<Vec<Order>, StoreError> {
    let rows = sqlx::query(
        "SELECT stream_id, event_id, version, event_type, data, recorded_at FROM order_events \
         ORDER BY stream_id, version",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut orders = Vec::new();
    let mut current: Option<(String, Option<Order>)> = None;
    for row in &rows {
        let stream: String = row.try_get("stream_id")?;
        let r = recorded(row).map_err(|e| StoreError::Corrupt(stream.clone(), e))?;
        let state = match current.take() {
            Some((id, state)) if id == stream => state,
            Some((_, finished)) => {
                orders.extend(finished);
                None
            }
            None => None,
        };
        let next = apply(state, &r.event, r.recorded_at)
            .map_err(|e| StoreError::Corrupt(stream.clone(), e))?;
        current = Some((stream, Some(next)));
    }
    if let Some((_, last)) = current {
        orders.extend(last);
    }
    Ok(orders)
}
