//! The shop on loopback: products and users (each on a database of its
//! own), an orders stand-in, and the gateway in front of them.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::{Value, json};
use shop_common::auth::Tokens;
use shop_common::config::{DatabaseSettings, ProxySettings, ServerSettings};
use shop_testkit::{OrdersStandIn, Running, TestDb, http, wait_ready};

pub const SECRET: &str = "the gateway test secret, 32+ bytes";

fn server() -> ServerSettings {
    ServerSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// A gateway config whose upstreams are all `unreachable` until set.
pub fn gateway_config(unreachable: &str) -> gateway::Config {
    gateway::Config {
        server: server(),
        proxy: ProxySettings::default(),
        jwt_secret: SECRET.into(),
        users_url: unreachable.into(),
        products_url: unreachable.into(),
        orders_url: unreachable.into(),
        payments_url: unreachable.into(),
        upstream_timeout: Duration::from_secs(2),
        rate_per_second: NonZeroU32::new(1000).unwrap(),
        rate_burst: NonZeroU32::new(1000).unwrap(),
        cors_origins: vec!["*".into()],
        max_body_bytes: 64 * 1024,
    }
}

pub async fn start_gateway(config: gateway::Config) -> Running {
    shop_common::telemetry::init_for_tests();
    let running =
        Running::start(move |listener, shutdown| gateway::run(config, listener, shutdown)).await;
    wait_ready(&running.url("/health/ready")).await;
    running
}

pub struct Shop {
    pub gateway: Running,
    pub products: Running,
    pub users: Running,
    pub orders: OrdersStandIn,
    _dbs: (TestDb, TestDb),
}

impl Shop {
    pub async fn start(db: TestDb) -> Shop {
        Shop::start_with(db, |_| {}).await
    }

    /// The whole shop; `tweak` adjusts the gateway's config.
    pub async fn start_with(products_db: TestDb, tweak: impl FnOnce(&mut gateway::Config)) -> Shop {
        shop_common::telemetry::init_for_tests();
        let users_db = TestDb::of(products_db.backend)
            .await
            .expect("a second database");
        let products_config = products::Config {
            server: server(),
            database: DatabaseSettings::new(&products_db.url),
            amqp_url: None,
        };
        let products = Running::start(move |l, s| products::run(products_config, l, s)).await;
        let orders = OrdersStandIn::start(vec![]).await;
        let users_config = users::Config {
            server: server(),
            database: DatabaseSettings::new(&users_db.url),
            proxy: ProxySettings::default(),
            jwt_secret: SECRET.into(),
            token_ttl: Duration::from_secs(600),
            orders_url: orders.running.url(""),
            orders_timeout: Duration::from_secs(2),
        };
        let users = Running::start(move |l, s| users::run(users_config, l, s)).await;
        wait_ready(&products.url("/health/ready")).await;
        wait_ready(&users.url("/health/ready")).await;

        let closed = format!("http://{}", shop_testkit::closed_port().await);
        let mut config = gateway_config(&closed);
        config.users_url = users.url("");
        config.products_url = products.url("");
        config.orders_url = orders.running.url("");
        tweak(&mut config);
        let gateway = start_gateway(config).await;
        Shop {
            gateway,
            products,
            users,
            orders,
            _dbs: (products_db, users_db),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Registers and logs in through the gateway: (user id, bearer token).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        let r = http()
            .post(self.url("/api/users"))
            .json(&json!({"email": email, "password": "s3cret-enough", "name": "Shopper"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "registering through the gateway");
        let user: Value = r.json().await.unwrap();
        let r = http()
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": "s3cret-enough"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "logging in through the gateway");
        let token: Value = r.json().await.unwrap();
        (
            user["id"].as_str().unwrap().into(),
            token["accessToken"].as_str().unwrap().into(),
        )
    }
}

pub fn tokens() -> Tokens {
    Tokens::new(SECRET.as_bytes())
}
