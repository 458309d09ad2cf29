//! payments: charges for orders, each checked against the order (amount,
//! status) and made once per Idempotency-Key and once per order. A charge
//! announces itself as `PaymentProcessed` through the outbox. A fault knob
//! (failure rate, added latency) lets the mesh's resilience be shown.

pub mod faults;
pub mod ledger;
pub mod rest;

use std::sync::Arc;
use std::time::Duration;

use shop_common::amqp::{self, Broker, BrokerCheck};
use shop_common::config::{ConfigError, DatabaseSettings, Env, ProxySettings, ServerSettings};
use shop_common::db::{self, DatabaseCheck};
use shop_common::events::Publisher;
use shop_common::health::Health;
use shop_common::http_client::HttpClient;
use shop_common::outbox::{self, Relay};
use shop_common::server::{self, App};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::faults::{FaultSettings, Faults};
use crate::ledger::Ledger;
use crate::rest::OrdersClient;

pub const SERVICE: &str = "payments";
pub const DEFAULT_PORT: u16 = 8084;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub proxy: ProxySettings,
    /// `AMQP_URL`; without it `PaymentProcessed` waits in the outbox.
    pub amqp_url: Option<String>,
    /// `ORDERS_URL` (default `http://orders`).
    pub orders_url: String,
    /// `ORDERS_TIMEOUT` (default 2s).
    pub orders_timeout: Duration,
    /// `PAYMENTS_FAILURE_RATE`, `PAYMENTS_ADDED_LATENCY`.
    pub faults: FaultSettings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            database: DatabaseSettings::from_env(env, SERVICE)?,
            proxy: ProxySettings::from_env(env)?,
            amqp_url: amqp::url_from_env(env)?,
            orders_url: env.or("ORDERS_URL", "http://orders".to_string())?,
            orders_timeout: env.duration_or("ORDERS_TIMEOUT", Duration::from_secs(2))?,
            faults: FaultSettings::from_env(env)?,
        })
    }
}

pub type AppState = Arc<Shared>;

pub struct Shared {
    pub ledger: Ledger,
    pub orders: OrdersClient,
    pub faults: Faults,
    pub relay: Option<Relay>,
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database, &MIGRATOR).await?;
    outbox::migrate(&db).await?;
    let mut health = Health::new().with_check(DatabaseCheck(db.clone()));
    let relay = match config.amqp_url.as_deref() {
        Some(url) => {
            let broker = Broker::start(url, SERVICE, shutdown.clone());
            health = health.with_check(BrokerCheck(broker.clone()));
            let publisher = Publisher::new(&broker).await?;
            Some(Relay::start(db.clone(), publisher, shutdown.clone()))
        }
        None => None,
    };
    let state = Arc::new(Shared {
        ledger: Ledger::new(db.clone()),
        orders: OrdersClient {
            http: HttpClient::new(&config.proxy, config.orders_timeout)?,
            base: config.orders_url.trim_end_matches('/').to_string(),
            timeout: config.orders_timeout,
        },
        faults: Faults::new(config.faults),
        relay,
    });
    let app = App {
        router: rest::router(state),
        health,
        openapi: rest::ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    db.close().await;
    Ok(())
}
