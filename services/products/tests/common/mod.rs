//! Starting products on loopback for a test.
#![allow(dead_code)]

use std::time::Duration;

use shop_common::config::{DatabaseSettings, ServerSettings};
use shop_common::consumer::RetryPolicy;
use shop_testkit::{Running, TestDb};

pub async fn start(db: &TestDb, amqp_url: Option<String>) -> Running {
    shop_common::telemetry::init_for_tests();
    let config = products::Config {
        server: ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace: Duration::from_secs(5),
        },
        database: DatabaseSettings::new(&db.url),
        amqp_url,
        retry: RetryPolicy {
            first_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
    };
    let running =
        Running::start(move |listener, shutdown| products::run(config, listener, shutdown)).await;
    shop_testkit::wait_ready(&running.url("/health/ready")).await;
    running
}
