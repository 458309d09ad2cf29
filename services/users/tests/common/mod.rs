//! Starting users on loopback for a test.
#![allow(dead_code)]

use std::time::Duration;

use shop_common::config::{DatabaseSettings, ProxySettings, ServerSettings};
use shop_testkit::{Running, TestDb};

pub const SECRET: &str = "a test secret of at least 32 bytes!";

pub async fn start(db: &TestDb, orders_url: &str) -> Running {
    shop_common::telemetry::init_for_tests();
    let config = users::Config {
        server: ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace: Duration::from_secs(5),
        },
        database: DatabaseSettings::new(&db.url),
        proxy: ProxySettings::default(),
        jwt_secret: SECRET.into(),
        token_ttl: Duration::from_secs(600),
        orders_url: orders_url.into(),
        orders_timeout: Duration::from_millis(500),
    };
    let running =
        Running::start(move |listener, shutdown| users::run(config, listener, shutdown)).await;
    shop_testkit::wait_ready(&running.url("/health/ready")).await;
    running
}
