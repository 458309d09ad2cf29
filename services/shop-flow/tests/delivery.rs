//! Events when things fail, with a real broker and each service on its own
//! database (SQLite, then Postgres): orders killed between its write and the
//! publish, two writers of one order, malformed messages. (The broker
//! stopped mid-burst is `outage.rs`: it stops the broker every test shares.)

mod common;

use std::time::{Duration, Instant};

use common::{open, per_order, shop_bin};
use serde_json::json;
use shop_common::outbox;
use shop_flow::{Processes, Shop, eventually, get_json_with, place, sign_up};
use shop_testkit::broker::{Tap, drain, publish_raw};
use shop_testkit::{TestDb, db_tests, http, send};

db_tests!(
    the_relay_publishes_what_a_killed_orders_left_behind,
    two_writers_of_one_order_one_gets_409,
    malformed_messages_go_to_the_dead_letter_queue,
);

async fn the_relay_publishes_what_a_killed_orders_left_behind(db: TestDb) {
    let Some(amqp) = shop_testkit::amqp_vhost() else {
        return;
    };
    let tap = Tap::start(&amqp).await;
    let mut shop = Processes::start(shop_bin(), db.backend, &amqp).await;
    let gw = shop.url("gateway", "");
    let (user, token) = sign_up(&gw, "crash@example.com").await;

    // orders comes back pointing at a broker that is not there: it records
    // orders and stages their events, and cannot publish them.
    shop.kill("orders");
    shop.spawn(
        "orders",
        &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    shop.wait_live("orders").await;
    let order = place(&gw, &token, &[("prod_003", 1)], None).await;
    let id = order["id"].as_str().unwrap().to_string();
    let orders_db = open(&shop.db.orders, &orders::MIGRATOR).await;
    assert_eq!(
        outbox::pending(&orders_db).await.unwrap(),
        1,
        "OrderCreated waits in the outbox"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !per_order(&tap.events(), "OrderCreated").0.contains_key(&id),
        "nothing is published without a broker"
    );

    // Killed before it could publish; started again with its broker.
    shop.kill("orders");
    shop.spawn("orders", &[]);
    shop.wait_ready("orders").await;
    let published = tap
        .wait_for(Duration::from_secs(30), |events| {
            per_order(events, "OrderCreated").0.contains_key(&id)
        })
        .await;
    assert!(
        published,
        "the relay published the staged OrderCreated after the restart"
    );
    let order_url = shop.url("orders", &format!("/api/v1/orders/{id}"));
    eventually(&order_url, None, Duration::from_secs(30), |o| {
        o["status"] == "PAID" && o["packedAt"].is_string()
    })
    .await;
    let notes_url = shop.url(
        "notifications",
        &format!("/api/v1/notifications?userId={user}"),
    );
    eventually(&notes_url, None, Duration::from_secs(30), |n| {
        n["data"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let (ids, copies) = per_order(&tap.events(), "OrderCreated");
    assert_eq!((ids[&id].len(), copies), (1, 1), "published once");
    // The fulfilment request went out too; its row is marked once confirmed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox::pending(&orders_db).await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox of orders is not empty"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn two_writers_of_one_order_one_gets_409(db: TestDb) {
    // No broker: the order stays CREATED (no PaymentProcessed arrives).
    let shop = Shop::start(db.backend, None).await;
    let (_, token) = shop.sign_up("race@example.com").await;
    let order = shop.place(&token, &[("prod_004", 1)]).await;
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["version"], 1);
    let change = |to: &str| {
        send(
            http()
                .put(shop.url(&format!("/api/orders/{id}/status")))
                .bearer_auth(&token)
                .json(&json!({"status": to, "version": 1})),
        )
    };
    let ((paid, a), (cancelled, b)) = tokio::join!(change("PAID"), change("CANCELLED"));
    let mut statuses = [paid, cancelled];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a} / {b}");
    let winner = if paid == 200 { "PAID" } else { "CANCELLED" };
    let loser = if paid == 200 { &b } else { &a };
    assert_eq!(loser["currentVersion"], 2, "{loser}");

    let now = get_json_with(&shop.url(&format!("/api/orders/{id}")), &token).await;
    assert_eq!(
        (now["status"].as_str(), now["version"].as_i64()),
        (Some(winner), Some(2))
    );
    // What the winner staged waits in the outbox for the broker, with
    // OrderCreated: OrderCancelled, or the fulfilment request of a PAID order.
    let orders_db = open(&shop.db.orders, &orders::MIGRATOR).await;
    assert_eq!(outbox::pending(&orders_db).await.unwrap(), 2);
}

async fn malformed_messages_go_to_the_dead_letter_queue(db: TestDb) {
    let Some(amqp) = shop_testkit::amqp_vhost() else {
        return;
    };
    let shop = Shop::start(db.backend, Some(amqp.clone())).await;
    let (_, token) = shop.sign_up("poison@example.com").await;
    // Not JSON on shop.events, an envelope without data, and a fulfilment
    // request that is not one: each is dead-lettered with its reason.
    publish_raw(
        &amqp,
        "shop.events",
        "OrderCreated",
        "poison-1",
        b"{not json",
    )
    .await;
    let no_data = json!({"eventId": "0190b3a4-0000-7000-8000-000000000001", "eventType": "PaymentProcessed",
        "version": "1.0", "timestamp": "2026-01-01T00:00:00Z", "data": {}});
    publish_raw(
        &amqp,
        "shop.events",
        "PaymentProcessed",
        "poison-2",
        no_data.to_string().as_bytes(),
    )
    .await;
    publish_raw(
        &amqp,
        "",
        orders::commands::FULFILMENT_QUEUE,
        "poison-3",
        b"[1, 2]",
    )
    .await;

    // The queues keep flowing: a real order behind them goes all the way.
    let order = shop.place(&token, &[("prod_005", 1)]).await;
    let id = order["id"].as_str().unwrap();
    eventually(
        &shop.url(&format!("/api/orders/{id}")),
        Some(&token),
        Duration::from_secs(30),
        |o| o["status"] == "PAID" && o["packedAt"].is_string(),
    )
    .await;
    eventually(
        &shop.url("/api/notifications"),
        Some(&token),
        Duration::from_secs(30),
        |n| n["data"].as_array().is_some_and(|d| d.len() == 2),
    )
    .await;

    let dead = |queue: &'static str| {
        let amqp = amqp.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = drain(&amqp, queue).await;
                if !got.is_empty() || Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let notifications = dead("notifications.dlq").await;
    let mut reasons: Vec<(String, String)> = notifications
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.raw).into_owned(),
                m.headers["x-error"].clone(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[1].0, "{not json");
    assert!(reasons[1].1.starts_with("malformed event"), "{reasons:?}");
    assert!(
        reasons[0].1.contains("data.userId is missing"),
        "{reasons:?}"
    );
    let products = dead("products.orders.dlq").await;
    assert_eq!(products.len(), 1);
    assert_eq!(products[0].raw, b"{not json");
    let orders = dead("orders.payments.dlq").await;
    assert_eq!(orders.len(), 1, "PaymentProcessed without data");
    let fulfilment = dead("order_processing.dlq").await;
    assert_eq!(fulfilment.len(), 1);
    assert_eq!(fulfilment[0].raw, b"[1, 2]");
    assert!(
        fulfilment[0].headers["x-error"].starts_with("malformed message"),
        "{:?}",
        fulfilment[0].headers
    );
    assert_eq!(
        fulfilment[0].headers["x-original-routing-key"],
        "order_processing"
    );
}
