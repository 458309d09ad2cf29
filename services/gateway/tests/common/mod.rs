//! A gateway on loopback whose upstreams are unreachable until a test says
//! otherwise.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::time::Duration;

use shop_common::auth::Tokens;
use shop_common::config::{ProxySettings, ServerSettings};
use shop_testkit::{Running, wait_ready};

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
        notifications_url: unreachable.into(),
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

pub fn tokens() -> Tokens {
    Tokens::new(SECRET.as_bytes())
}
