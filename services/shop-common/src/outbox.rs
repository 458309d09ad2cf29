//! The transactional outbox: a service writes the messages that announce a
//! change into its own database, in the same transaction as the change, and
//! a relay publishes them to the broker afterwards and marks each one sent
//! only once the broker confirmed it. A crash, a broker outage or a lost
//! connection delays a message; nothing loses it. The price is that a
//! message whose confirm was lost is published again: consumers deduplicate
//! by message id ([`first_delivery`]).
//!
//! One replica relays at a time (a lease in the database, renewed while it
//! works), so replicas do not publish the same rows twice. Rows leave in the
//! order they were written (`created_at`, then the time-ordered id).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, now_millis};
use crate::events::{self, Outgoing, PublishError, Publisher};

/// The outbox, lease and processed-message tables, with a migration history
/// of their own so a service's own migrations stay its own.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator =
        Migrator::with_migrations(sqlx::migrate!("./migrations").migrations.to_vec());
    migrator.dangerous_set_table_name("_shop_messaging_migrations");
    migrator
});

/// Creates the messaging tables in a service's database (idempotent).
pub async fn migrate(db: &Db) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(db).await
}

/// Writes `message` into the outbox as part of the caller's transaction.
pub async fn stage(tx: &mut AnyConnection, message: &Outgoing) -> Result<(), sqlx::Error> {
    let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO outbox (id, exchange, routing_key, kind, body, headers, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(message.id.clone())
    .bind(message.exchange.clone())
    .bind(message.routing_key.clone())
    .bind(message.kind.clone())
    .bind(String::from_utf8_lossy(&message.body).into_owned())
    .bind(headers)
    .bind(now_millis())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records that `consumer` handled `message_id`, in the caller's
/// transaction; `false` if it already had (a redelivery: do nothing).
pub async fn first_delivery(
    tx: &mut AnyConnection,
    consumer: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(consumer.to_string())
    .bind(message_id.to_string())
    .bind(now_millis())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// How many messages wait to be published.
pub async fn pending(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
        .fetch_one(db)
        .await?
        .try_get("n")
}

/// Publishing attempts per message id (a message published once has 1).
pub async fn attempts(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query("SELECT id, attempts FROM outbox ORDER BY created_at, id")
        .fetch_all(db)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("attempts")?)))
        .collect()
}

const BATCH: i64 = 100;
const POLL: Duration = Duration::from_millis(500);
const LEASE: Duration = Duration::from_secs(5);

/// The relay's handle: wake it after a commit that staged messages, so they
/// leave at once rather than at the next poll.
#[derive(Clone)]
pub struct Relay {
    wake: Arc<Notify>,
}

impl Relay {
    /// Starts relaying `db`'s outbox through `publisher` until `shutdown`.
    pub fn start(db: Db, publisher: Publisher, shutdown: CancellationToken) -> Relay {
        let relay = Relay {
            wake: Arc::new(Notify::new()),
        };
        let holder = uuid::Uuid::new_v4().to_string();
        tokio::spawn(run(db, publisher, relay.wake.clone(), holder, shutdown));
        relay
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

async fn run(
    db: Db,
    publisher: Publisher,
    wake: Arc<Notify>,
    holder: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        loop {
            match relay_batch(&db, &publisher, &holder).await {
                Ok(sent) => {
                    backoff = Duration::from_millis(100);
                    if sent < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "relaying the outbox failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
    // Let another replica take over at once.
    let _ =
        sqlx::query("UPDATE outbox_lease SET expires_at = 0 WHERE name = 'relay' AND holder = $1")
            .bind(holder)
            .execute(&db)
            .await;
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing {id}: {source}")]
    Publish { id: String, source: PublishError },
}

/// Publishes up to one batch of pending messages if this replica holds the
/// lease; how many it published.
async fn relay_batch(db: &Db, publisher: &Publisher, holder: &str) -> Result<usize, RelayError> {
    if !hold_lease(db, holder).await? {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT id, exchange, routing_key, kind, body, headers FROM outbox \
         WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(db)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let Some(channel) = publisher.channel() else {
        return Err(RelayError::Publish {
            id: "(batch)".into(),
            source: PublishError::NotConnected,
        });
    };
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let headers: String = row.try_get("headers")?;
        let body: String = row.try_get("body")?;
        messages.push(Outgoing {
            id: row.try_get("id")?,
            exchange: row.try_get("exchange")?,
            routing_key: row.try_get("routing_key")?,
            kind: row.try_get("kind")?,
            body: body.into_bytes(),
            headers: serde_json::from_str(&headers).unwrap_or_default(),
        });
    }
    // All in flight at once; each marked sent as its confirm arrives, in order.
    let mut in_flight = Vec::with_capacity(messages.len());
    for message in &messages {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1 WHERE id = $1")
            .bind(message.id.clone())
            .execute(db)
            .await?;
        let confirm = events::send(&channel, message)
            .await
            .map_err(|e| RelayError::Publish {
                id: message.id.clone(),
                source: e.into(),
            })?;
        in_flight.push((message, confirm));
    }
    let mut sent = 0;
    for (message, confirm) in in_flight {
        events::confirmed(confirm, message)
            .await
            .map_err(|source| RelayError::Publish {
                id: message.id.clone(),
                source,
            })?;
        sqlx::query("UPDATE outbox SET published_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(message.id.clone())
            .execute(db)
            .await?;
        sent += 1;
    }
    Ok(sent)
}

/// Takes or renews the relay lease; whether this holder has it.
async fn hold_lease(db: &Db, holder: &str) -> Result<bool, sqlx::Error> {
    let now = now_millis();
    let until = now + LEASE.as_millis() as i64;
    let renewed = sqlx::query(
        "UPDATE outbox_lease SET holder = $1, expires_at = $2 \
         WHERE name = 'relay' AND (holder = $1 OR expires_at < $3)",
    )
    .bind(holder.to_string())
    .bind(until)
    .bind(now)
    .execute(db)
    .await?
    .rows_affected();
    if renewed == 1 {
        return Ok(true);
    }
    let taken = sqlx::query(
        "INSERT INTO outbox_lease (name, holder, expires_at) VALUES ('relay', $1, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(holder.to_string())
    .bind(until)
    .execute(db)
    .await?
    .rows_affected();
    Ok(taken == 1)
}
