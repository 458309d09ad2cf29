//! gateway: the shop's single entry point.
//!
//! Routes `/api/users`, `/api/auth`, `/api/products`, `/api/orders`,
//! `/api/payments` and `/api/notifications` to the services' `/api/v1/…`; checks bearer tokens
//! (reading products, registering and logging in are public); limits each
//! client's request rate; answers CORS; logs one line per request; and
//! composes `/api/orders/{id}/with-product-details` and
//! `/api/products/{id}/with-inventory` from several calls.
//!
//! The layers, outermost first: trace + access log (shop-common), CORS,
//! rate limit, authentication, then the aggregations or the proxy.

pub mod aggregate;
pub mod auth;
pub mod proxy;
pub mod ratelimit;
pub mod routes;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware;
use axum::routing::get;
use shop_common::auth::Tokens;
use shop_common::config::{ConfigError, Env, ProxySettings, ServerSettings};
use shop_common::health::Health;
use shop_common::http_client::HttpClient;
use shop_common::server::{self, App};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;

use crate::ratelimit::RateLimit;
use crate::routes::Upstream;

pub const SERVICE: &str = "gateway";
pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub proxy: ProxySettings,
    /// `JWT_SECRET`, the one users signs with.
    pub jwt_secret: String,
    /// `USERS_URL`, `PRODUCTS_URL`, `ORDERS_URL`, `PAYMENTS_URL`,
    /// `NOTIFICATIONS_URL` (default `http://<service>`).
    pub users_url: String,
    pub products_url: String,
    pub orders_url: String,
    pub payments_url: String,
    pub notifications_url: String,
    /// `UPSTREAM_TIMEOUT` (default 10s) for each call to a service.
    pub upstream_timeout: Duration,
    /// `RATE_LIMIT_PER_SECOND` (default 50) and `RATE_LIMIT_BURST` (default 100), per client.
    pub rate_per_second: NonZeroU32,
    pub rate_burst: NonZeroU32,
    /// `CORS_ALLOWED_ORIGINS`: `*` (default) or a comma-separated list.
    pub cors_origins: Vec<String>,
    /// `MAX_BODY_BYTES` (default 1 MiB) for a request body.
    pub max_body_bytes: usize,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = |var: &str, service: &str| env.or(var, format!("http://{service}"));
        let cors: String = env.or("CORS_ALLOWED_ORIGINS", "*".to_string())?;
        let cors_origins: Vec<String> = cors
            .split(',')
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        for origin in &cors_origins {
            if origin != "*" && HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::invalid(
                    "CORS_ALLOWED_ORIGINS",
                    &cors,
                    format!("{origin:?} is not an origin"),
                ));
            }
        }
        Ok(Config {
            server: ServerSettings::from_env(env, DEFAULT_PORT)?,
            proxy: ProxySettings::from_env(env)?,
            jwt_secret: env.secret("JWT_SECRET", 32)?,
            users_url: url("USERS_URL", "users")?,
            products_url: url("PRODUCTS_URL", "products")?,
            orders_url: url("ORDERS_URL", "orders")?,
            payments_url: url("PAYMENTS_URL", "payments")?,
            notifications_url: url("NOTIFICATIONS_URL", "notifications")?,
            upstream_timeout: env.duration_or("UPSTREAM_TIMEOUT", Duration::from_secs(10))?,
            rate_per_second: env.or(
                "RATE_LIMIT_PER_SECOND",
                NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            )?,
            rate_burst: env.or(
                "RATE_LIMIT_BURST",
                NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            )?,
            cors_origins,
            max_body_bytes: env.or("MAX_BODY_BYTES", 1024 * 1024)?,
        })
    }
}

/// What the handlers share.
pub type Gateway = Arc<Shared>;

pub struct Shared {
    pub http: HttpClient,
    pub max_body_bytes: usize,
    upstreams: [String; 5],
}

impl Shared {
    pub fn base_url(&self, upstream: Upstream) -> &str {
        let i = match upstream {
            Upstream::Users => 0,
            Upstream::Products => 1,
            Upstream::Orders => 2,
            Upstream::Payments => 3,
            Upstream::Notifications => 4,
        };
        &self.upstreams[i]
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gateway",
        description = "The shop's entry point. Besides the aggregations below it forwards \
            /api/users, /api/auth, /api/products, /api/orders, /api/payments and /api/notifications \
            to the services' \
            /api/v1/… (see their own /openapi.json). A bearer token is required except to read \
            products, register (POST /api/users) and log in (POST /api/auth/login)."
    ),
    paths(
        aggregate::order_with_product_details,
        aggregate::product_with_inventory
    ),
    components(schemas(
        aggregate::Warning,
        shop_common::Problem,
        shop_common::problem::FieldError
    ))
)]
pub struct ApiDoc;

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::LOCATION,
            header::ETAG,
            HeaderName::from_static(shop_common::telemetry::TRACE_ID_HEADER),
        ])
        .max_age(Duration::from_secs(600))
}

/// Runs the gateway on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let trim = |u: &str| u.trim_end_matches('/').to_string();
    let gateway = Arc::new(Shared {
        http: HttpClient::new(&config.proxy, config.upstream_timeout)?,
        max_body_bytes: config.max_body_bytes,
        upstreams: [
            trim(&config.users_url),
            trim(&config.products_url),
            trim(&config.orders_url),
            trim(&config.payments_url),
            trim(&config.notifications_url),
        ],
    });
    let rate = RateLimit::new(config.rate_per_second, config.rate_burst);
    rate.spawn_housekeeping(shutdown.clone());
    let tokens = Tokens::new(config.jwt_secret.as_bytes());

    let router = axum::Router::new()
        .route(
            "/api/orders/{id}/with-product-details",
            get(aggregate::order_with_product_details),
        )
        .route(
            "/api/products/{id}/with-inventory",
            get(aggregate::product_with_inventory),
        )
        .fallback(proxy::forward)
        .layer(middleware::from_fn_with_state(tokens, auth::authenticate))
        .layer(middleware::from_fn_with_state(rate, ratelimit::limit))
        .layer(cors(&config.cors_origins))
        .with_state(gateway);
    let app = App {
        router,
        health: Health::new(),
        openapi: ApiDoc::openapi(),
    };
    server::serve(listener, app, shutdown, config.server.shutdown_grace).await?;
    Ok(())
}
