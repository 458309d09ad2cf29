//! notifications: tells users about their orders. Consumes `OrderCreated`
//! and `PaymentProcessed` from its own durable queue (`notifications`, with
//! retries and a dead-letter queue), once per `eventId`, and records each
//! notification it sends through a pluggable [`sender::Sender`].

pub mod sender;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shop_common::Problem;
use shop_common::amqp::{self, Broker, BrokerCheck};
use shop_common::config::{ConfigError, DatabaseSettings, Env, ServerSettings};
use shop_common::consumer::{self, Failure, Message, QueueSpec, RetryPolicy};
use shop_common::db::{self, DatabaseCheck, Db, now_millis, rfc3339};
use shop_common::extract::Query;
use shop_common::health::Health;
use shop_common::problem::FieldError;
use shop_common::server::{self, App};
use sqlx::Row;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::sender::{LogSender, Sender};

pub const SERVICE: &str = "notifications";
pub const DEFAULT_PORT: u16 = 8085;
pub const QUEUE: &str = "notifications";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// `AMQP_URL`: where the events come from.
    pub amqp_url: Option<String>,
    /// `RETRY_FIRST_DELAY`, `RETRY_MAX`.
    pub retry: RetryPolicy,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            database: DatabaseSettings::from_env(env, SERVICE)?,
            amqp_url: amqp::url_from_env(env)?,
            retry: RetryPolicy::from_env(env)?,
        })
    }
}

/// One notification, as sent and as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: String,
    /// The event it is about.
    pub event_id: String,
    pub event_type: String,
    pub user_id: String,
    pub channel: String,
    pub subject: String,
    pub body: String,
    /// The trace the event travelled in (it crosses the broker).
    pub trace_id: String,
    pub created_at: String,
}

/// What an event says to its user: `(user id, subject, body)`.
pub fn compose(
    event_type: &str,
    data: &serde_json::Value,
) -> Result<(String, String, String), Failure> {
    let text = |field: &str| {
        data[field]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::Reject(format!("{event_type}: data.{field} is missing")))
    };
    let amount = |field: &str| {
        data[field]
            .as_f64()
            .ok_or_else(|| Failure::Reject(format!("{event_type}: data.{field} is missing")))
    };
    let user = text("userId")?;
    let order = text("orderId")?;
    let currency = text("currency")?;
    Ok(match event_type {
        "OrderCreated" => (
            user,
            format!("Order {order} received"),
            format!(
                "Thank you! Your order {order} for {:.2} {currency} was received.",
                amount("totalAmount")?
            ),
        ),
        "PaymentProcessed" => (
            user,
            format!("Payment for order {order}"),
            format!(
                "We received your payment of {:.2} {currency} for order {order}.",
                amount("amount")?
            ),
        ),
        other => return Err(Failure::Reject(format!("no notification for {other}"))),
    })
}

#[derive(Clone)]
pub struct Notifier {
    db: Db,
    sender: Arc<dyn Sender>,
}

impl Notifier {
    /// Handles one event: records and sends its notification, unless its
    /// `eventId` was handled before (a redelivery).
    pub async fn handle(&self, message: Message) -> Result<(), Failure> {
        let event = message.envelope::<serde_json::Value>()?;
        let (user_id, subject, body) = compose(&event.event_type, &event.data)?;
        let notification = Notification {
            id: format!("ntf_{}", uuid::Uuid::now_v7().simple()),
            event_id: event.event_id.to_string(),
            event_type: event.event_type.clone(),
            user_id,
            channel: self.sender.channel().to_string(),
            subject,
            body,
            trace_id: shop_common::telemetry::current_trace_id().to_string(),
            created_at: rfc3339(now_millis()),
        };
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO notifications (id, event_id, event_type, user_id, channel, subject, body, trace_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(notification.id.clone())
        .bind(notification.event_id.clone())
        .bind(notification.event_type.clone())
        .bind(notification.user_id.clone())
        .bind(notification.channel.clone())
        .bind(notification.subject.clone())
        .bind(notification.body.clone())
        .bind(notification.trace_id.clone())
        .bind(now_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tracing::info!(event_id = %notification.event_id, "event seen before; nothing sent");
            return Ok(());
        }
        // Sent before the commit: a failed send leaves no record, and is retried.
        self.sender
            .send(&notification)
            .await
            .map_err(|e| Failure::Retry(format!("sending: {e}")))?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn of_user(&self, user_id: &str) -> Result<Vec<Notification>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, event_id, event_type, user_id, channel, subject, body, trace_id, created_at \
             FROM notifications WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Notification {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    user_id: r.try_get("user_id")?,
                    channel: r.try_get("channel")?,
                    subject: r.try_get("subject")?,
                    body: r.try_get("body")?,
                    trace_id: r.try_get("trace_id")?,
                    created_at: rfc3339(r.try_get("created_at")?),
                })
            })
            .collect()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "notifications", description = "What the shop told its users."),
    paths(list_notifications),
    components(schemas(Notification, NotificationList, Problem, FieldError))
)]
pub struct ApiDoc;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub data: Vec<Notification>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Whose notifications (default: the authenticated caller).
    user_id: Option<String>,
}

/// A user's notifications, oldest first.
#[utoipa::path(get, path = "/api/v1/notifications", params(ListQuery),
    responses((status = 200, body = NotificationList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn list_notifications(
    State(notifier): State<Notifier>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<NotificationList>, Problem> {
    let user = match (shop_common::auth::caller(&headers), q.user_id) {
        (Some(c), Some(u)) if c != u => {
            return Err(Problem::forbidden(
                "a user may only read their own notifications",
            ));
        }
        (Some(c), _) => c,
        (None, Some(u)) => u,
        (None, None) => return Err(Problem::field("userId", "is required")),
    };
    Ok(Json(NotificationList {
        data: notifier.of_user(&user).await?,
    }))
}

/// Runs the service with the log sender.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, Arc::new(LogSender)).await
}

/// Runs the service with `sender`.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    sender: Arc<dyn Sender>,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database, &MIGRATOR).await?;
    let notifier = Notifier {
        db: db.clone(),
        sender,
    };
    let mut health = Health::new().with_check(DatabaseCheck(db.clone()));
    if let Some(url) = config.amqp_url.as_deref() {
        let broker = Broker::start(url, SERVICE, shutdown.clone());
        health = health.with_check(BrokerCheck(broker.clone()));
        let spec = QueueSpec {
            queue: QUEUE.into(),
            events: vec!["OrderCreated".into(), "PaymentProcessed".into()],
            prefetch: 8,
            retry: config.retry,
        };
        let handler = notifier.clone();
        consumer::consume(&broker, spec, move |message| {
            let handler = handler.clone();
            async move { handler.handle(message).await }
        })
        .await?;
    }
    let router = shop_common::server::router()
        .route("/api/v1/notifications", get(list_notifications))
        .with_state(notifier);
    let app = App {
        router,
        health,
        openapi: ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    db.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_messages() {
        let data = serde_json::json!({"orderId": "ord_1", "userId": "usr_1", "totalAmount": 109.97, "currency": "USD"});
        let (user, subject, body) = compose("OrderCreated", &data).unwrap();
        assert_eq!(
            (user.as_str(), subject.as_str()),
            ("usr_1", "Order ord_1 received")
        );
        assert!(body.contains("109.97 USD"), "{body}");
        let paid = serde_json::json!({"orderId": "ord_1", "userId": "usr_1", "amount": 5.5, "currency": "EUR"});
        assert!(
            compose("PaymentProcessed", &paid)
                .unwrap()
                .2
                .contains("5.50 EUR")
        );
        assert!(matches!(
            compose("OrderCreated", &paid),
            Err(Failure::Reject(_))
        ));
        assert!(matches!(
            compose("InventoryUpdated", &data),
            Err(Failure::Reject(_))
        ));
    }
}
