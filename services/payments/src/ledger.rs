//! Charges in the database. A charge and its `PaymentProcessed` event are
//! written in one transaction (the event into the outbox), so a recorded
//! payment is always announced, and never twice.

use serde::{Deserialize, Serialize};
use shop_common::db::{Db, now_millis, rfc3339};
use shop_common::events::{Envelope, Outgoing};
use shop_common::outbox;
use shop_common::validate::from_cents;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub amount_cents: i64,
    pub currency: String,
    pub method: String,
    pub status: String,
    pub created_at: i64,
}

/// The `data` of `PaymentProcessed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub status: String,
    pub payment_method: String,
}

impl PaymentProcessed {
    pub fn of(p: &Payment) -> Self {
        PaymentProcessed {
            payment_id: p.id.clone(),
            order_id: p.order_id.clone(),
            user_id: p.user_id.clone(),
            amount: from_cents(p.amount_cents),
            currency: p.currency.clone(),
            status: p.status.clone(),
            payment_method: p.method.clone(),
        }
    }
}

macro_rules! columns {
    () => {
        "id, order_id, user_id, idempotency_key, request_hash, amount_cents, currency, method, status, created_at"
    };
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Payment, sqlx::Error> {
    Ok(Payment {
        id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_hash: row.try_get("request_hash")?,
        amount_cents: row.try_get("amount_cents")?,
        currency: row.try_get("currency")?,
        method: row.try_get("method")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key or the order has a payment already.
    #[error("a payment exists already")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Ledger {
    db: Db,
}

impl Ledger {
    pub fn new(db: Db) -> Self {
        Ledger { db }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Payment>, sqlx::Error> {
        self.one(
            concat!("SELECT ", columns!(), " FROM payments WHERE id = $1"),
            id,
        )
        .await
    }

    pub async fn by_key(&self, key: &str) -> Result<Option<Payment>, sqlx::Error> {
        self.one(
            concat!(
                "SELECT ",
                columns!(),
                " FROM payments WHERE idempotency_key = $1"
            ),
            key,
        )
        .await
    }

    pub async fn by_order(&self, order_id: &str) -> Result<Option<Payment>, sqlx::Error> {
        self.one(
            concat!("SELECT ", columns!(), " FROM payments WHERE order_id = $1"),
            order_id,
        )
        .await
    }

    async fn one(&self, sql: &'static str, value: &str) -> Result<Option<Payment>, sqlx::Error> {
        sqlx::query(sql)
            .bind(value.to_string())
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// Records a completed payment and stages its `PaymentProcessed`.
    pub async fn record(&self, payment: &Payment) -> Result<(), RecordError> {
        let event = Envelope::new("PaymentProcessed", PaymentProcessed::of(payment));
        let message = Outgoing::event(&event).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO payments (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(payment.id.clone())
        .bind(payment.order_id.clone())
        .bind(payment.user_id.clone())
        .bind(payment.idempotency_key.clone())
        .bind(payment.request_hash.clone())
        .bind(payment.amount_cents)
        .bind(payment.currency.clone())
        .bind(payment.method.clone())
        .bind(payment.status.clone())
        .bind(payment.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if shop_common::db::is_unique_violation(&e) => {
                return Err(RecordError::Duplicate);
            }
            Err(e) => return Err(e.into()),
        }
        outbox::stage(&mut tx, &message).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A new payment id and the time.
pub fn new_id() -> (String, i64) {
    (
        format!("pay_{}", uuid::Uuid::now_v7().simple()),
        now_millis(),
    )
}

pub fn created_at(p: &Payment) -> String {
    rfc3339(p.created_at)
}
