//! users: registration (argon2id passwords), login (HS256 JWTs) and a
//! user's orders (from the orders service).

pub mod accounts;
pub mod orders;
pub mod passwords;
pub mod rest;

use std::sync::Arc;
use std::time::Duration;

use shop_common::auth::Tokens;
use shop_common::config::{ConfigError, DatabaseSettings, Env, ProxySettings, ServerSettings};
use shop_common::db::{self, DatabaseCheck};
use shop_common::health::Health;
use shop_common::http_client::HttpClient;
use shop_common::server::{self, App};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::accounts::Accounts;
use crate::orders::OrdersClient;

pub const SERVICE: &str = "users";
pub const DEFAULT_PORT: u16 = 8081;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub proxy: ProxySettings,
    /// `JWT_SECRET`, at least 32 bytes, shared with the gateway.
    pub jwt_secret: String,
    /// `JWT_TTL`, how long a token is valid (default 1h).
    pub token_ttl: Duration,
    /// `ORDERS_URL` (default `http://orders`).
    pub orders_url: String,
    /// `ORDERS_TIMEOUT` (default 2s).
    pub orders_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            database: DatabaseSettings::from_env(env, SERVICE)?,
            proxy: ProxySettings::from_env(env)?,
            jwt_secret: env.secret("JWT_SECRET", 32)?,
            token_ttl: env.duration_or("JWT_TTL", Duration::from_secs(3600))?,
            orders_url: env.or("ORDERS_URL", "http://orders".to_string())?,
            orders_timeout: env.duration_or("ORDERS_TIMEOUT", Duration::from_secs(2))?,
        })
    }
}

pub type AppState = Arc<Shared>;

pub struct Shared {
    pub accounts: Accounts,
    pub tokens: Tokens,
    pub token_ttl: Duration,
    pub orders: OrdersClient,
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database, &MIGRATOR).await?;
    let http = HttpClient::new(&config.proxy, config.orders_timeout)?;
    let state = Arc::new(Shared {
        accounts: Accounts::new(db.clone()),
        tokens: Tokens::new(config.jwt_secret.as_bytes()),
        token_ttl: config.token_ttl,
        orders: OrdersClient::new(http, &config.orders_url, config.orders_timeout),
    });
    let app = App {
        router: rest::router(state),
        health: Health::new().with_check(DatabaseCheck(db.clone())),
        openapi: rest::ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    db.close().await;
    Ok(())
}
