//! The shop as a whole on loopback, for the tests and benchmarks that cross
//! services: [`Shop`] runs the six services in this process (each on its own
//! database and port), [`Processes`] runs them as six processes of the
//! `shop` binary. Either way they call each other by URL as they would
//! through their sidecars, and share a broker when one is given.

pub mod measure;
pub mod processes;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shop_common::config::{DatabaseSettings, ProxySettings, ServerSettings};
use shop_common::consumer::RetryPolicy;
use shop_testkit::{Backend, Running, TestDb, http, listener, wait_ready};

pub use processes::Processes;

/// The JWT secret of every shop started here.
pub const SECRET: &str = "the shop-flow test secret, 32+ bytes";

/// Retries short enough for tests: 100 ms, 400 ms, 1.6 s.
pub fn test_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        first_delay: Duration::from_millis(100),
        factor: 4,
    }
}

fn server() -> ServerSettings {
    ServerSettings {
        listen: "127.0.0.1:0".parse().expect("an address"),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// A gateway configuration whose upstreams all refuse connections.
pub fn gateway_config() -> gateway::Config {
    let closed = "http://127.0.0.1:1".to_string();
    gateway::Config {
        server: server(),
        proxy: ProxySettings::default(),
        jwt_secret: SECRET.into(),
        users_url: closed.clone(),
        products_url: closed.clone(),
        orders_url: closed.clone(),
        payments_url: closed.clone(),
        notifications_url: closed,
        upstream_timeout: Duration::from_secs(10),
        rate_per_second: std::num::NonZeroU32::MAX,
        rate_burst: std::num::NonZeroU32::MAX,
        cors_origins: vec!["*".into()],
        max_body_bytes: 1024 * 1024,
    }
}

/// How to start a [`Shop`].
pub struct Options {
    /// The broker (a vhost of the test broker); `None`: no events.
    pub amqp_url: Option<String>,
    pub faults: payments::faults::FaultSettings,
    pub sender: Option<Arc<dyn notifications::sender::Sender>>,
    /// Adjusts the gateway's configuration.
    pub gateway: Box<dyn FnOnce(&mut gateway::Config) + Send>,
}

impl Options {
    pub fn new(amqp_url: Option<String>) -> Options {
        Options {
            amqp_url,
            faults: Default::default(),
            sender: None,
            gateway: Box::new(|_| {}),
        }
    }
}

/// The six services in this process.
pub struct Shop {
    pub gateway: Running,
    pub users: Running,
    pub products: Running,
    pub orders: Running,
    pub payments: Running,
    pub notifications: Running,
    pub db: Dbs,
    pub amqp_url: Option<String>,
}

/// Each service's database.
pub struct Dbs {
    pub users: TestDb,
    pub products: TestDb,
    pub orders: TestDb,
    pub payments: TestDb,
    pub notifications: TestDb,
}

impl Dbs {
    pub async fn new(backend: Backend) -> Dbs {
        let db = || async { TestDb::of(backend).await.expect("a test database") };
        Dbs {
            users: db().await,
            products: db().await,
            orders: db().await,
            payments: db().await,
            notifications: db().await,
        }
    }
}

impl Shop {
    pub async fn start(backend: Backend, amqp_url: Option<String>) -> Shop {
        Shop::start_with(backend, Options::new(amqp_url)).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Shop {
        shop_common::telemetry::init_for_tests();
        let db = Dbs::new(backend).await;
        let listeners = [
            listener().await,
            listener().await,
            listener().await,
            listener().await,
            listener().await,
            listener().await,
        ];
        let url = |i: usize| format!("http://{}", listeners[i].local_addr().expect("an address"));
        let (users_url, products_url, orders_url, payments_url, notifications_url) =
            (url(0), url(1), url(2), url(3), url(4));
        let amqp = options.amqp_url.clone();
        let [
            l_users,
            l_products,
            l_orders,
            l_payments,
            l_notifications,
            l_gateway,
        ] = listeners;

        let config = users::Config {
            server: server(),
            database: DatabaseSettings::new(&db.users.url),
            proxy: ProxySettings::default(),
            jwt_secret: SECRET.into(),
            token_ttl: Duration::from_secs(600),
            orders_url: orders_url.clone(),
            orders_timeout: Duration::from_secs(2),
        };
        let users = Running::start_on(l_users, move |l, s| users::run(config, l, s));
        let config = products::Config {
            server: server(),
            database: DatabaseSettings::new(&db.products.url),
            amqp_url: amqp.clone(),
            retry: test_retry(),
        };
        let products = Running::start_on(l_products, move |l, s| products::run(config, l, s));
        let config = orders::Config {
            server: server(),
            database: DatabaseSettings::new(&db.orders.url),
            proxy: ProxySettings::default(),
            amqp_url: amqp.clone(),
            users_url: users_url.clone(),
            products_url: products_url.clone(),
            payments_url: payments_url.clone(),
            upstream_timeout: Duration::from_secs(5),
            retry: test_retry(),
        };
        let orders = Running::start_on(l_orders, move |l, s| orders::run(config, l, s));
        let config = payments::Config {
            server: server(),
            database: DatabaseSettings::new(&db.payments.url),
            proxy: ProxySettings::default(),
            amqp_url: amqp.clone(),
            orders_url: orders_url.clone(),
            orders_timeout: Duration::from_secs(2),
            faults: options.faults,
        };
        let payments = Running::start_on(l_payments, move |l, s| payments::run(config, l, s));
        let config = notifications::Config {
            server: server(),
            database: DatabaseSettings::new(&db.notifications.url),
            amqp_url: amqp.clone(),
            retry: test_retry(),
        };
        let sender = options
            .sender
            .unwrap_or_else(|| Arc::new(notifications::sender::LogSender));
        let notifications = Running::start_on(l_notifications, move |l, s| {
            notifications::run_with(config, l, s, sender)
        });
        let mut config = gateway::Config {
            users_url,
            products_url,
            orders_url,
            payments_url,
            notifications_url,
            ..gateway_config()
        };
        (options.gateway)(&mut config);
        let gateway = Running::start_on(l_gateway, move |l, s| gateway::run(config, l, s));
        for running in [
            &users,
            &products,
            &orders,
            &payments,
            &notifications,
            &gateway,
        ] {
            wait_ready(&running.url("/health/ready")).await;
        }
        Shop {
            gateway,
            users,
            products,
            orders,
            payments,
            notifications,
            db,
            amqp_url: amqp,
        }
    }

    /// A URL of the gateway.
    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Registers and logs in through the gateway: (user id, bearer token).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        sign_up(&self.url(""), email).await
    }

    /// Places an order through the gateway; the answer.
    pub async fn place(&self, token: &str, items: &[(&str, u32)]) -> Value {
        place(&self.url(""), token, items, None).await
    }
}

/// Registers and logs in at a gateway: (user id, bearer token).
pub async fn sign_up(gateway: &str, email: &str) -> (String, String) {
    let r = http()
        .post(format!("{gateway}/api/users"))
        .json(&json!({"email": email, "password": "s3cret-enough", "name": "Shopper"}))
        .send()
        .await
        .expect("registering");
    assert_eq!(r.status(), 201, "registering through the gateway");
    let user: Value = r.json().await.expect("a user");
    let r = http()
        .post(format!("{gateway}/api/auth/login"))
        .json(&json!({"email": email, "password": "s3cret-enough"}))
        .send()
        .await
        .expect("logging in");
    assert_eq!(r.status(), 200, "logging in through the gateway");
    let token: Value = r.json().await.expect("a token");
    (
        user["id"].as_str().expect("an id").into(),
        token["accessToken"].as_str().expect("a token").into(),
    )
}

/// Places an order at a gateway, expecting 201; the answer.
pub async fn place(gateway: &str, token: &str, items: &[(&str, u32)], key: Option<&str>) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(p, q)| json!({"productId": p, "quantity": q}))
        .collect();
    let mut request = http()
        .post(format!("{gateway}/api/orders"))
        .bearer_auth(token)
        .json(&json!({"items": items}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.expect("placing an order");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "placing an order: {body}");
    body
}

/// `GET url` with a bearer token, expecting 200; the JSON answer.
pub async fn get_json_with(url: &str, token: &str) -> Value {
    let (status, body) = shop_testkit::send(http().get(url).bearer_auth(token)).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// Polls `GET url` (with `token`) until `done` holds for the JSON answer;
/// the last answer. Panics after `timeout`.
pub async fn eventually(
    url: &str,
    token: Option<&str>,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut request = http().get(url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let body: Value = match request.send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url}: not there within {timeout:?}; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
