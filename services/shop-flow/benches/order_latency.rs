//! End-to-end latency of an order on loopback: the six services as six
//! processes of the `shop` binary, the test broker (a vhost of its own),
//! each service on SQLite and then on Postgres. Orders one after another;
//! for each, the time until the POST answered (user checked, stock
//! reserved, event stored, charged), until the read model shows PAID
//! (PaymentProcessed went through the broker to orders) and until both
//! notifications are recorded (OrderCreated and PaymentProcessed reached
//! notifications). Needs the test servers:
//!
//!     eval "$(bash services/testenv/testenv.sh up)"
//!     cargo bench -p shop-flow --bench order_latency [-- <orders>]

use std::time::{Duration, Instant};

use serde_json::Value;
use shop_flow::measure::{count_arg, report};
use shop_flow::{Processes, place, sign_up};
use shop_testkit::{Backend, http};

/// Polls `url` until `done` holds; fails after a minute.
async fn until(url: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http().get(url).send().await
            && let Ok(body) = r.json::<Value>().await
            && done(&body)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: not there within a minute"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn run(backend: Backend, name: &str, n: usize) {
    let amqp = shop_testkit::amqp_vhost().expect("SHOP_TEST_AMQP_URL (testenv.sh up)");
    let shop = Processes::start(env!("CARGO_BIN_EXE_shop").as_ref(), backend, &amqp).await;
    let gw = shop.url("gateway", "");
    let (user, token) = sign_up(&gw, "latency@example.com").await;
    let notes = shop.url(
        "notifications",
        &format!("/api/v1/notifications?userId={user}"),
    );
    let (mut placed, mut paid, mut notified) = (Vec::new(), Vec::new(), Vec::new());
    // Ten to warm up, then `n` measured.
    for i in 0..n + 10 {
        let product = ["prod_001", "prod_002"][i % 2];
        let start = Instant::now();
        let order = place(&gw, &token, &[(product, 1)], None).await;
        let answered = start.elapsed();
        let id = order["id"].as_str().expect("an order id");
        until(&shop.url("orders", &format!("/api/v1/orders/{id}")), |o| {
            o["status"] == "PAID"
        })
        .await;
        let is_paid = start.elapsed();
        let expected = 2 * (i + 1);
        until(&notes, |n| {
            n["data"].as_array().is_some_and(|d| d.len() >= expected)
        })
        .await;
        let is_notified = start.elapsed();
        if i >= 10 {
            placed.push(answered);
            paid.push(is_paid);
            notified.push(is_notified);
        }
    }
    report(&format!("{name}: POST /api/orders answered"), &mut placed);
    report(&format!("{name}: order PAID in the read model"), &mut paid);
    report(
        &format!("{name}: both notifications recorded"),
        &mut notified,
    );
}

#[tokio::main]
async fn main() {
    let n = count_arg(200);
    println!("orders one after another through the gateway, six processes on loopback");
    run(Backend::Sqlite, "sqlite  ", n).await;
    run(Backend::Postgres, "postgres", n).await;
}
