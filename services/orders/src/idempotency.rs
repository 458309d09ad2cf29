//! `Idempotency-Key` for `POST /orders`: the first request with a key claims
//! an order id for it; a retry with the same key and the same request gets
//! that order (and finishes whatever the first one did not); the same key
//! with a different request is refused.

use sha2::{Digest, Sha256};
use shop_common::db::{Db, now_millis};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new; this order id is now its.
    Fresh(String),
    /// The key was used before for the same request, for this order id.
    Seen(String),
    /// The key was used before for another request.
    Mismatch,
}

/// A stable hash of the request a key came with.
pub fn request_hash(request: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(request.to_string().as_bytes()))
}

pub fn new_order_id() -> String {
    format!("ord_{}", uuid::Uuid::now_v7().simple())
}

/// Claims `key` for `user_id`'s request. Two concurrent requests with one
/// key get the same order id: the database keeps the first insert.
pub async fn claim(db: &Db, user_id: &str, key: &str, hash: &str) -> Result<Claim, sqlx::Error> {
    let candidate = new_order_id();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, idem_key) DO NOTHING",
    )
    .bind(user_id.to_string())
    .bind(key.to_string())
    .bind(hash.to_string())
    .bind(candidate.clone())
    .bind(now_millis())
    .execute(db)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh(candidate));
    }
    let row = sqlx::query(
        "SELECT request_hash, order_id FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2",
    )
    .bind(user_id.to_string())
    .bind(key.to_string())
    .fetch_one(db)
    .await?;
    let stored: String = row.try_get("request_hash")?;
    Ok(if stored == hash {
        Claim::Seen(row.try_get("order_id")?)
    } else {
        Claim::Mismatch
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_request() {
        let a = serde_json::json!({"items": [{"productId": "p", "quantity": 1}]});
        let b = serde_json::json!({"items": [{"productId": "p", "quantity": 2}]});
        assert_eq!(request_hash(&a), request_hash(&a.clone()));
        assert_ne!(request_hash(&a), request_hash(&b));
        assert!(new_order_id().starts_with("ord_"));
    }
}
