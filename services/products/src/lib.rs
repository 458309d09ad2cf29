//! products: the shop's catalogue and inventory.
//!
//! REST under `/api/v1/products`, gRPC `product.v1.ProductService` on the
//! same port, and AMQP request-reply on the queue `product_requests` when a
//! broker is configured. The catalogue is seeded with 60 products by the
//! migrations on first start.

pub mod catalog;
pub mod grpc;
pub mod listing;
pub mod prices;
pub mod rest;
pub mod rpc;

use std::sync::Arc;

use shop_common::amqp::{self, Broker, BrokerCheck};
use shop_common::config::{ConfigError, DatabaseSettings, Env, ServerSettings};
use shop_common::db::{self, DatabaseCheck};
use shop_common::health::Health;
use shop_common::server::{self, App};
use shop_proto::product::v1::product_service_server::ProductServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::catalog::Catalog;
use crate::prices::PriceFeed;

pub const SERVICE: &str = "products";
pub const DEFAULT_PORT: u16 = 8082;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// `AMQP_URL`; without it there is no request-reply and price changes
    /// reach only this replica's watchers.
    pub amqp_url: Option<String>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            database: DatabaseSettings::from_env(env, SERVICE)?,
            amqp_url: amqp::url_from_env(env)?,
        })
    }
}

/// What the handlers share.
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub catalog: Catalog,
    pub prices: PriceFeed,
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database, &MIGRATOR).await?;
    let catalog = Catalog::new(db.clone());
    let mut health = Health::new().with_check(DatabaseCheck(db.clone()));

    let broker = config
        .amqp_url
        .as_deref()
        .map(|url| Broker::start(url, SERVICE, shutdown.clone()));
    if let Some(broker) = &broker {
        health = health.with_check(BrokerCheck(broker.clone()));
        rpc::serve(broker, catalog.clone()).await?;
    }
    let prices = PriceFeed::new(broker.as_ref()).await?;

    let grpc = ProductServiceServer::new(grpc::ProductGrpc {
        catalog: catalog.clone(),
        prices: prices.clone(),
        shutdown: shutdown.clone(),
    });
    let state = Arc::new(Shared { catalog, prices });
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
