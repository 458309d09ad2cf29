//! products: the shop's catalogue and inventory.
//!
//! REST under `/api/v1/products` (and `/api/v1/reservations`, stock held
//! for orders), gRPC `product.v1.ProductService` on the same port, and AMQP
//! request-reply on the queue `product_requests` when a broker is
//! configured. It consumes `OrderCreated` (commits the reserved stock) and
//! `OrderCancelled` (gives it back), and publishes `InventoryUpdated` and
//! `PriceChanged` through its outbox. The catalogue is seeded with 60
//! products by the migrations on first start.

pub mod catalog;
pub mod grpc;
pub mod listing;
pub mod prices;
pub mod reservations;
pub mod rest;
pub mod rpc;

use std::sync::Arc;

use shop_common::amqp::{self, Broker, BrokerCheck};
use shop_common::config::{ConfigError, DatabaseSettings, Env, ServerSettings};
use shop_common::consumer::{self, QueueSpec, RetryPolicy};
use shop_common::db::{self, DatabaseCheck};
use shop_common::events::{Envelope, Publisher};
use shop_common::health::Health;
use shop_common::outbox::{self, Relay};
use shop_common::server::{self, App};
use shop_proto::product::v1::product_service_server::ProductServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::catalog::Catalog;
use crate::prices::PriceFeed;
use crate::reservations::{OrderLines, Reservations};

pub const SERVICE: &str = "products";
pub const DEFAULT_PORT: u16 = 8082;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// `AMQP_URL`; without it there is no request-reply, events wait in the
    /// outbox and price changes reach only this replica's watchers.
    pub amqp_url: Option<String>,
    /// `RETRY_MAX`, `RETRY_FIRST_DELAY`: for the order events it consumes.
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

/// What the handlers share.
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub catalog: Catalog,
    pub prices: PriceFeed,
    pub reservations: Reservations,
    pub relay: Option<Relay>,
}

impl Shared {
    /// After a commit that staged events: publish them now.
    pub fn wake_relay(&self) {
        if let Some(relay) = &self.relay {
            relay.wake();
        }
    }
}

/// The queue products consumes order events from.
pub const ORDERS_QUEUE: &str = "products.orders";

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database, &MIGRATOR).await?;
    outbox::migrate(&db).await?;
    let catalog = Catalog::new(db.clone());
    let reservations = Reservations::new(db.clone());
    let mut health = Health::new().with_check(DatabaseCheck(db.clone()));

    let broker = config
        .amqp_url
        .as_deref()
        .map(|url| Broker::start(url, SERVICE, shutdown.clone()));
    let mut relay = None;
    if let Some(broker) = &broker {
        health = health.with_check(BrokerCheck(broker.clone()));
        rpc::serve(broker, catalog.clone()).await?;
        let publisher = Publisher::new(broker).await?;
        let r = Relay::start(db.clone(), publisher, shutdown.clone());
        consume_orders(broker, reservations.clone(), r.clone(), config.retry).await?;
        relay = Some(r);
    }
    let prices = PriceFeed::new(broker.as_ref()).await?;

    let grpc = ProductServiceServer::new(grpc::ProductGrpc {
        catalog: catalog.clone(),
        prices: prices.clone(),
        shutdown: shutdown.clone(),
    });
    let state = Arc::new(Shared {
        catalog,
        prices,
        reservations,
        relay,
    });
    let router = rest::router(state).merge(
        tonic::service::Routes::new(grpc)
            .into_axum_router()
            .reset_fallback(),
    );
    let app = App {
        router,
        health,
        openapi: rest::ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    db.close().await;
    Ok(())
}

/// `OrderCreated` commits an order's reserved stock, `OrderCancelled` gives
/// it back; each stages `InventoryUpdated` events.
async fn consume_orders(
    broker: &Broker,
    reservations: Reservations,
    relay: Relay,
    retry: RetryPolicy,
) -> lapin::Result<()> {
    let spec = QueueSpec {
        queue: ORDERS_QUEUE.into(),
        events: vec!["OrderCreated".into(), "OrderCancelled".into()],
        prefetch: 8,
        retry,
    };
    consumer::consume(broker, spec, move |message| {
        let (reservations, relay) = (reservations.clone(), relay.clone());
        async move {
            let event: Envelope<OrderLines> = message.envelope()?;
            match event.event_type.as_str() {
                "OrderCreated" => reservations.commit(ORDERS_QUEUE, &event).await?,
                "OrderCancelled" => reservations.cancel(ORDERS_QUEUE, &event).await?,
                other => {
                    return Err(consumer::Failure::Reject(format!(
                        "not an order event: {other}"
                    )));
                }
            }
            relay.wake();
            Ok(())
        }
    })
    .await
}
