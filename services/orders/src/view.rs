//! The read model (the query side of CQRS): `order_view`, one row per order,
//! which every GET reads. The projector is [`upsert`], called by each append
//! in its transaction; [`rebuild`] throws the table away and replays every
//! stream, and must end where the live projection is.

use shop_common::db::{Backend, Db};
use sqlx::{AnyConnection, Row};

use crate::domain::{Item, Order, Status};
use crate::store::{self, StoreError};

macro_rules! columns {
    () => {
        "id, user_id, status, items, total_cents, currency, payment_id, packed_at, version, created_at, updated_at"
    };
}

/// Writes `order`'s current state.
pub async fn upsert(tx: &mut AnyConnection, order: &Order) -> Result<(), sqlx::Error> {
    let items = serde_json::to_string(&order.items).unwrap_or_else(|_| "[]".into());
    sqlx::query(concat!(
        "INSERT INTO order_view (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, items = excluded.items, \
         total_cents = excluded.total_cents, currency = excluded.currency, \
         payment_id = excluded.payment_id, packed_at = excluded.packed_at, \
         version = excluded.version, updated_at = excluded.updated_at"
    ))
    .bind(order.id.clone())
    .bind(order.user_id.clone())
    .bind(order.status.as_str())
    .bind(items)
    .bind(order.total_cents)
    .bind(order.currency.clone())
    .bind(order.payment_id.clone())
    .bind(order.packed_at)
    .bind(order.version)
    .bind(order.created_at)
    .bind(order.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Order, sqlx::Error> {
    let items: String = row.try_get("items")?;
    let status: String = row.try_get("status")?;
    let decode = |what: &str| sqlx::Error::Decode(format!("order_view.{what}").into());
    Ok(Order {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        status: Status::parse(&status).ok_or_else(|| decode("status"))?,
        items: serde_json::from_str::<Vec<Item>>(&items).map_err(|_| decode("items"))?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        payment_id: row.try_get("payment_id")?,
        packed_at: row.try_get("packed_at")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM order_view WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// A user's orders, newest first.
pub async fn of_user(db: &Db, user_id: &str) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM order_view WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(user_id.to_string())
    .fetch_all(db)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Every row, by id (to compare a rebuilt read model with the live one).
pub async fn all(db: &Db) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM order_view ORDER BY id"
    ))
    .fetch_all(db)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Replays every stream into a new read model; how many orders it holds.
/// Appends wait meanwhile (Postgres: a lock on the event table; SQLite: the
/// transaction's write lock, taken by its first statement), so none is lost
/// between the replay and the swap.
pub async fn rebuild(db: &Db, backend: Backend) -> Result<usize, StoreError> {
    let mut tx = db.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("LOCK TABLE order_events IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM order_view")
        .execute(&mut *tx)
        .await?;
    let orders = store::all_streams(&mut tx).await?;
    for order in &orders {
        upsert(&mut tx, order).await?;
    }
    tx.commit().await?;
    Ok(orders.len())
}
