//! orders: placing orders and following them to delivery.
//!
//! Event-sourced: every change is an event appended to the order's stream
//! (`store`), the state is what replaying the stream gives (`domain`), and
//! a read model kept in the same transaction answers the queries (`view`,
//! CQRS). Published events go through the outbox, relayed to RabbitMQ with
//! publisher confirms. A completed payment (`PaymentProcessed`) marks the
//! order PAID and queues its fulfilment on `order_processing`.

pub mod commands;
pub mod consumers;
pub mod domain;
pub mod idempotency;
pub mod rest;
pub mod store;
pub mod upstream;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use shop_common::amqp::{self, Broker, BrokerCheck};
use shop_common::config::{ConfigError, DatabaseSettings, Env, ProxySettings, ServerSettings};
use shop_common::consumer::RetryPolicy;
use shop_common::db::{self, Backend, DatabaseCheck};
use shop_common::events::Publisher;
use shop_common::health::Health;
use shop_common::http_client::HttpClient;
use shop_common::outbox::{self, Relay};
use shop_common::server::{self, App};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::commands::Orders;
use crate::store::EventStore;
use crate::upstream::Upstreams;

pub const SERVICE: &str = "orders";
pub const DEFAULT_PORT: u16 = 8083;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub proxy: ProxySettings,
    /// `AMQP_URL`; without it events wait in the outbox.
    pub amqp_url: Option<String>,
    /// `USERS_URL`, `PRODUCTS_URL`, `PAYMENTS_URL` (default `http://<service>`).
    pub users_url: String,
    pub products_url: String,
    pub payments_url: String,
    /// `UPSTREAM_TIMEOUT` (default 5s): per call to another service.
    pub upstream_timeout: Duration,
    /// `RETRY_FIRST_DELAY`, `RETRY_MAX` (default 500ms, 3): consumed
    /// messages that fail are retried after 1, 4, 16 times the first delay.
    pub retry: RetryPolicy,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            database: DatabaseSettings::from_env(env, SERVICE)?,
            proxy: ProxySettings::from_env(env)?,
            amqp_url: amqp::url_from_env(env)?,
            users_url: env.or("USERS_URL", "http://users".to_string())?,
            products_url: env.or("PRODUCTS_URL", "http://products".to_string())?,
            payments_url: env.or("PAYMENTS_URL", "http://payments".to_string())?,
            upstream_timeout: env.duration_or("UPSTREAM_TIMEOUT", Duration::from_secs(5))?,
            retry: RetryPolicy::from_env(env)?,
        })
    }
}

pub type AppState = Arc<Shared>;

pub struct Shared {
    pub orders: Orders,
}

/// Connects to the database (migrating it): the one `run` and the rebuild
/// command both use.
pub async fn database(config: &DatabaseSettings) -> anyhow::Result<db::Db> {
    let db = db::connect(config, &MIGRATOR).await?;
    outbox::migrate(&db).await?;
    Ok(db)
}

/// `orders rebuild-read-model`: replays every stream into a new read model.
pub async fn rebuild_read_model(config: &DatabaseSettings) -> anyhow::Result<usize> {
    let db = database(config).await?;
    let n = view::rebuild(&db, Backend::of(&config.url)).await?;
    db.close().await;
    Ok(n)
}

/// The `rebuild-read-model` command: `DATABASE_URL` from the environment,
/// the count printed, exit code 0 (2 for a bad setting, 1 for a failure).
pub async fn rebuild_command() -> std::process::ExitCode {
    use std::process::ExitCode;
    let settings = match DatabaseSettings::from_env(&Env::from_process(), SERVICE) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orders: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match rebuild_read_model(&settings).await {
        Ok(n) => {
            println!("read model rebuilt: {n} orders");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orders: rebuilding the read model: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = database(&config.database).await?;
    let mut health = Health::new().with_check(DatabaseCheck(db.clone()));
    let broker = config
        .amqp_url
        .as_deref()
        .map(|url| Broker::start(url, SERVICE, shutdown.clone()));
    let relay = match &broker {
        Some(broker) => {
            health = health.with_check(BrokerCheck(broker.clone()));
            let publisher = Publisher::new(broker).await?;
            Some(Relay::start(db.clone(), publisher, shutdown.clone()))
        }
        None => None,
    };
    let http = HttpClient::new(&config.proxy, config.upstream_timeout)?;
    let orders = Orders {
        store: EventStore::new(db.clone()),
        upstreams: Upstreams {
            http,
            users: config.users_url.trim_end_matches('/').to_string(),
            products: config.products_url.trim_end_matches('/').to_string(),
            payments: config.payments_url.trim_end_matches('/').to_string(),
            timeout: config.upstream_timeout,
        },
        relay,
    };
    if let Some(broker) = &broker {
        consumers::start(broker, orders.clone(), config.retry).await?;
    }
    let app = App {
        router: rest::router(Arc::new(Shared { orders })),
        health,
        openapi: rest::ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    db.close().await;
    Ok(())
}
