//! Stock held for orders. Placing an order reserves its lines, all or
//! nothing, at today's prices (`reserve`, idempotent per order); its
//! `OrderCreated` event commits them: the stock goes down and an
//! `InventoryUpdated` per product is staged in the outbox in the same
//! transaction (`commit`); `OrderCancelled` releases what was only reserved
//! and returns what was committed (`cancel`). A reservation of an order that
//! is never recorded is released by orders (`release`).

use serde::{Deserialize, Serialize};
use shop_common::consumer::Failure;
use shop_common::db::{Db, now_millis};
use shop_common::events::{Envelope, Outgoing};
use shop_common::outbox;
use shop_common::validate::from_cents;
use sqlx::{AnyConnection, Row};

pub const RESERVED: &str = "RESERVED";
pub const COMMITTED: &str = "COMMITTED";

/// One line to reserve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Line {
    pub product_id: String,
    pub quantity: u32,
}

/// One reserved line, at the price it was reserved at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    pub product_id: String,
    pub quantity: u32,
    pub price: f64,
    pub currency: String,
    /// RESERVED, COMMITTED, RELEASED or RETURNED.
    pub state: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("line {0}: no such product")]
    NotFound(usize),
    #[error("line {index}: only {available} available")]
    Insufficient { index: usize, available: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The `data` of `InventoryUpdated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryUpdated {
    pub product_id: String,
    pub quantity_changed: i64,
    pub new_quantity: i64,
    /// `ORDER` or `CANCELLED`.
    pub reason: String,
    pub order_id: String,
}

/// The lines of an order event, as products reads them (the rest of the
/// event is not its business).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLines {
    pub order_id: String,
    pub items: Vec<OrderLine>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: u32,
}

#[derive(Clone)]
pub struct Reservations {
    db: Db,
}

impl Reservations {
    pub fn new(db: Db) -> Self {
        Reservations { db }
    }

    /// The lines reserved for `order_id`, if any.
    pub async fn of_order(&self, order_id: &str) -> Result<Vec<Reserved>, sqlx::Error> {
        lines(&self.db, order_id).await
    }

    /// Reserves every line or none; a repeated call for the same order
    /// returns the first reservation.
    pub async fn reserve(
        &self,
        order_id: &str,
        items: &[Line],
    ) -> Result<Vec<Reserved>, ReserveError> {
        let existing = self.of_order(order_id).await?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        for (index, line) in items.iter().enumerate() {
            let quantity = i64::from(line.quantity);
            // First a write, so SQLite takes its write lock before any read.
            let held = sqlx::query(
                "UPDATE products SET reserved = reserved + $1, version = version + 1, updated_at = $2 \
                 WHERE id = $3 AND stock - reserved >= $1",
            )
            .bind(quantity)
            .bind(now)
            .bind(line.product_id.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row = sqlx::query("SELECT stock - reserved AS available, price_cents, currency FROM products WHERE id = $1")
                .bind(line.product_id.clone())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(ReserveError::NotFound(index))?;
            if held == 0 {
                return Err(ReserveError::Insufficient {
                    index,
                    available: row.try_get("available")?,
                });
            }
            let inserted = sqlx::query(
                "INSERT INTO reservations (order_id, product_id, quantity, price_cents, currency, state, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(order_id.to_string())
            .bind(line.product_id.clone())
            .bind(quantity)
            .bind(row.try_get::<i64, _>("price_cents")?)
            .bind(row.try_get::<String, _>("currency")?)
            .bind(RESERVED)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                drop(tx);
                // The same order reserved concurrently: that one stands.
                if shop_common::db::is_unique_violation(&e) {
                    return Ok(self.of_order(order_id).await?);
                }
                return Err(e.into());
            }
        }
        tx.commit().await?;
        Ok(self.of_order(order_id).await?)
    }

    /// Releases what is still only reserved for `order_id`.
    pub async fn release(&self, order_id: &str) -> Result<usize, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let n = release_in(&mut tx, order_id).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// `OrderCreated`: takes the order's lines out of stock and stages an
    /// `InventoryUpdated` for each, once per event.
    pub async fn commit(
        &self,
        consumer: &str,
        event: &Envelope<OrderLines>,
    ) -> Result<(), Failure> {
        let mut tx = self.db.begin().await?;
        if !outbox::first_delivery(&mut tx, consumer, &event.event_id.to_string()).await? {
            return Ok(());
        }
        let order_id = &event.data.order_id;
        let now = now_millis();
        for line in &event.data.items {
            let quantity = i64::from(line.quantity);
            let state = state_of(&mut tx, order_id, &line.product_id).await?;
            let changed = match state.as_deref() {
                Some(RESERVED) => {
                    sqlx::query(
                        "UPDATE products SET stock = stock - $1, reserved = reserved - $1, version = version + 1, updated_at = $2 WHERE id = $3",
                    )
                    .bind(quantity)
                    .bind(now)
                    .bind(line.product_id.clone())
                    .execute(&mut *tx)
                    .await?;
                    set_state(&mut tx, order_id, &line.product_id, COMMITTED, now).await?;
                    true
                }
                // Placed without a reservation: take it from what is available.
                None => {
                    let taken = sqlx::query(
                        "UPDATE products SET stock = stock - $1, version = version + 1, updated_at = $2 \
                         WHERE id = $3 AND stock - reserved >= $1",
                    )
                    .bind(quantity)
                    .bind(now)
                    .bind(line.product_id.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if taken == 0 {
                        return Err(Failure::Reject(format!(
                            "order {order_id}: not enough stock of {:?} (or no such product)",
                            line.product_id
                        )));
                    }
                    true
                }
                // Committed already, or cancelled before it arrived.
                Some(_) => false,
            };
            if changed {
                stage_update(&mut tx, &line.product_id, -quantity, "ORDER", order_id).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// `OrderCancelled`: releases what was reserved and returns to stock
    /// what was committed (with an `InventoryUpdated`), once per event.
    pub async fn cancel(
        &self,
        consumer: &str,
        event: &Envelope<OrderLines>,
    ) -> Result<(), Failure> {
        let mut tx = self.db.begin().await?;
        if !outbox::first_delivery(&mut tx, consumer, &event.event_id.to_string()).await? {
            return Ok(());
        }
        let order_id = &event.data.order_id;
        release_in(&mut tx, order_id).await?;
        let now = now_millis();
        for line in &event.data.items {
            if state_of(&mut tx, order_id, &line.product_id)
                .await?
                .as_deref()
                != Some(COMMITTED)
            {
                continue;
            }
            let quantity = i64::from(line.quantity);
            sqlx::query("UPDATE products SET stock = stock + $1, version = version + 1, updated_at = $2 WHERE id = $3")
                .bind(quantity)
                .bind(now)
                .bind(line.product_id.clone())
                .execute(&mut *tx)
                .await?;
            set_state(&mut tx, order_id, &line.product_id, "RETURNED", now).await?;
            stage_update(&mut tx, &line.product_id, quantity, "CANCELLED", order_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn lines(db: &Db, order_id: &str) -> Result<Vec<Reserved>, sqlx::Error> {
    sqlx::query(
        "SELECT product_id, quantity, price_cents, currency, state FROM reservations \
         WHERE order_id = $1 ORDER BY created_at, product_id",
    )
    .bind(order_id.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| {
        Ok(Reserved {
            product_id: r.try_get("product_id")?,
            quantity: u32::try_from(r.try_get::<i64, _>("quantity")?).unwrap_or(0),
            price: from_cents(r.try_get("price_cents")?),
            currency: r.try_get("currency")?,
            state: r.try_get("state")?,
        })
    })
    .collect()
}

async fn release_in(tx: &mut AnyConnection, order_id: &str) -> Result<usize, sqlx::Error> {
    let held = sqlx::query(
        "SELECT product_id, quantity FROM reservations WHERE order_id = $1 AND state = $2",
    )
    .bind(order_id.to_string())
    .bind(RESERVED)
    .fetch_all(&mut *tx)
    .await?;
    let now = now_millis();
    for row in &held {
        let product: String = row.try_get("product_id")?;
        let quantity: i64 = row.try_get("quantity")?;
        sqlx::query("UPDATE products SET reserved = reserved - $1, version = version + 1, updated_at = $2 WHERE id = $3")
            .bind(quantity)
            .bind(now)
            .bind(product.clone())
            .execute(&mut *tx)
            .await?;
        set_state(tx, order_id, &product, "RELEASED", now).await?;
    }
    Ok(held.len())
}

async fn state_of(
    tx: &mut AnyConnection,
    order_id: &str,
    product_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT state FROM reservations WHERE order_id = $1 AND product_id = $2")
        .bind(order_id.to_string())
        .bind(product_id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("state"))
        .transpose()
}

async fn set_state(
    tx: &mut AnyConnection,
    order_id: &str,
    product_id: &str,
    state: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET state = $1, updated_at = $2 WHERE order_id = $3 AND product_id = $4")
        .bind(state.to_string())
        .bind(now)
        .bind(order_id.to_string())
        .bind(product_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn stage_update(
    tx: &mut AnyConnection,
    product_id: &str,
    change: i64,
    reason: &str,
    order_id: &str,
) -> Result<(), Failure> {
    let new_quantity: i64 = sqlx::query("SELECT stock FROM products WHERE id = $1")
        .bind(product_id.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get("stock")?;
    let event = Envelope::new(
        "InventoryUpdated",
        InventoryUpdated {
            product_id: product_id.to_string(),
            quantity_changed: change,
            new_quantity,
            reason: reason.to_string(),
            order_id: order_id.to_string(),
        },
    );
    let message = Outgoing::event(&event).map_err(|e| Failure::Reject(e.to_string()))?;
    outbox::stage(tx, &message).await?;
    Ok(())
}
