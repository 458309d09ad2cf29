//! `trellis dev` end to end: the whole shop (its real binaries, each with
//! its own sidecar, and a RabbitMQ node) on loopback, with the policies of
//! `examples/policies/`. Orders are placed through the gateway; the
//! payments process is killed: the orders→payments breaker opens (the
//! orders sidecar's metrics say so) and orders get the configured fallback;
//! `trellis dev` restarts payments and the breaker closes. A policy edit
//! reaches the running sidecar. SIGINT leaves no process behind.

mod common;

use std::time::{Duration, Instant};

use common::{
    Dev, SHOP, assert_broker, build, metric, order, payments_policy, shop_files, shopper, survivors,
};
use serde_json::Value;

async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_payments_trips_the_orders_breaker_and_is_restarted() {
    build(&SHOP);
    let mut dev = Dev::start(&shop_files(), &[]);
    assert!(dev.printed("all 6 services ready"), "not all ready");
    assert_broker(&dev);
    let token = shopper(&dev).await;

    // An order through the gateway, orders, users, products and payments.
    let (status, placed) = order(&dev, &token, 0).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["payment"]["status"], "COMPLETED", "{placed}");

    let payments = dev.service("payments").await;
    let pid = payments["app"]["pid"].as_i64().expect("payments runs") as i32;
    let opened = |m: &str| {
        metric(
            m,
            "trellis_circuit_transitions_total",
            &["peer=\"payments\"", "to=\"open\""],
        )
    };
    let opened_before = opened(&dev.metrics("orders").await);
    // SAFETY: a kill(2) of a process `trellis dev` started for this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let killed = Instant::now();

    // Orders keep coming; their payments fail until the breaker opens.
    let mut n = 1;
    let mut failed_payments = 0;
    let open = loop {
        let batch = four_orders(&dev, &token, n).await;
        n += 4;
        failed_payments += batch
            .iter()
            .filter(|(s, v)| *s == 201 && v["payment"]["status"] == "FAILED")
            .count();
        if opened(&dev.metrics("orders").await) > opened_before {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the orders→payments breaker never opened"
        );
    };
    eprintln!("orders→payments breaker open {open:?} after payments was killed");
    assert!(failed_payments > 0, "no order saw its payment fail");

    // While open, the orders sidecar answers with the policy's fallback.
    let m = dev.metrics("orders").await;
    let fallbacks_before = metric(
        &m,
        "trellis_fallback_responses_total",
        &["peer=\"payments\""],
    );
    let (status, placed) = order(&dev, &token, n).await;
    n += 1;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["payment"]["status"], "FAILED", "{placed}");
    let m = dev.metrics("orders").await;
    let fallbacks = metric(
        &m,
        "trellis_fallback_responses_total",
        &["peer=\"payments\""],
    );
    assert!(
        fallbacks > fallbacks_before,
        "an order during the open breaker got no fallback: {m}"
    );

    // `trellis dev` restarts payments; the breaker closes; orders are paid again.
    let closed = until(
        "payments restarted and the breaker closed",
        Duration::from_secs(90),
        || {
            let dev = &dev;
            let token = token.clone();
            n += 1;
            let k = n;
            async move {
                let (status, placed) = order(dev, &token, k).await;
                let m = dev.metrics("orders").await;
                status == 201
                    && placed["payment"]["status"] == "COMPLETED"
                    && metric(&m, "trellis_circuit_state", &["peer=\"payments\""]) == 0.0
                    && metric(
                        &m,
                        "trellis_circuit_transitions_total",
                        &["peer=\"payments\"", "to=\"closed\""],
                    ) >= 1.0
            }
        },
    )
    .await;
    eprintln!("orders→payments breaker closed and orders paid {closed:?} after it opened");
    assert!(
        dev.printed("crashed (signal: 9"),
        "the crash was not reported"
    );
    let payments = dev.service("payments").await;
    assert_eq!(payments["app"]["restarts"], 1, "{payments}");
    assert_ne!(payments["app"]["pid"].as_i64(), Some(i64::from(pid)));

    // A policy edit reaches the running orders sidecar.
    let edited = payments_policy().replace("payments unavailable", "payments away for a moment");
    assert_ne!(
        edited,
        payments_policy(),
        "the example policy has no fallback body to edit"
    );
    std::fs::write(dev.manifest("policy-payments.yaml"), edited).expect("edit");
    let admin = dev.service("orders").await["ports"]["admin"].clone();
    let reloaded = until(
        "the edited policy reaches the orders sidecar",
        Duration::from_secs(20),
        || async {
            let config = dev
                .http
                .get(format!("http://127.0.0.1:{admin}/config"))
                .send()
                .await
                .expect("admin answers")
                .text()
                .await
                .unwrap_or_default();
            config.contains("payments away for a moment")
        },
    )
    .await;
    eprintln!("policy edit applied in {reloaded:?}");
    assert!(dev.printed("new config for"), "the reload was not reported");

    let pids = dev.pids().await;
    assert_eq!(pids.len(), 12, "{pids:?}");
    let needle = dev.dir.path().display().to_string();
    assert!(
        dev.interrupt(),
        "trellis dev did not exit cleanly on SIGINT"
    );
    assert!(dev.printed("trellis dev: stopped"));
    let left = survivors(&pids, &needle);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Four orders at once; their statuses and answers.
async fn four_orders(dev: &Dev, token: &str, first: usize) -> Vec<(u16, Value)> {
    let (a, b, c, d) = tokio::join!(
        order(dev, token, first),
        order(dev, token, first + 1),
        order(dev, token, first + 2),
        order(dev, token, first + 3),
    );
    vec![a, b, c, d]
}
