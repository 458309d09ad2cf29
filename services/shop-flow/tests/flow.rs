//! The whole shop as six processes on loopback, with a real broker and each
//! service on its own database (SQLite, then Postgres): a user signs up,
//! logs in, orders, pays; the events flow; the notification is recorded;
//! the read model shows PAID. Every event published on the way validates
//! against its schema and carries the trace of the request that caused it.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use shop_flow::{Processes, eventually, place, sign_up};
use shop_testkit::broker::Tap;
use shop_testkit::{Backend, TestDb, http, send};

const WAIT: Duration = Duration::from_secs(20);

async fn the_whole_flow(backend: Backend) {
    let Some(amqp) = shop_testkit::amqp_vhost() else {
        return;
    };
    let tap = Tap::start(&amqp).await;
    let shop = Processes::start(env!("CARGO_BIN_EXE_shop").as_ref(), backend, &amqp).await;
    let gw = shop.url("gateway", "");

    // Sign up, log in, order two products with an Idempotency-Key.
    let (user, token) = sign_up(&gw, "flow@example.com").await;
    let r = http()
        .post(format!("{gw}/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "flow-1")
        .json(&json!({"items": [{"productId": "prod_001", "quantity": 2}, {"productId": "prod_011", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let trace_id = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    let placed: Value = r.json().await.unwrap();
    let order_id = placed["id"].as_str().unwrap().to_string();
    assert_eq!(placed["userId"], user.as_str());
    assert_eq!(placed["status"], "CREATED");
    assert_eq!(placed["payment"]["status"], "COMPLETED", "{placed}");
    let total = placed["totalAmount"].as_f64().unwrap();
    assert!(total > 0.0);

    // A retry with the same key is the same order, charged once.
    let again = http()
        .post(format!("{gw}/api/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "flow-1")
        .json(&json!({"items": [{"productId": "prod_001", "quantity": 2}, {"productId": "prod_011", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], order_id.as_str());
    assert_eq!(
        again["payment"]["paymentId"],
        placed["payment"]["paymentId"]
    );

    // PaymentProcessed → orders marks it PAID; fulfilment packs it.
    let order_url = format!("{gw}/api/orders/{order_id}");
    let paid = eventually(&order_url, Some(&token), WAIT, |o| {
        o["status"] == "PAID" && o["packedAt"].is_string()
    })
    .await;
    assert_eq!(paid["paymentId"], placed["payment"]["paymentId"]);
    assert_eq!(paid["version"], 3, "created, paid, packed: {paid}");

    // OrderCreated and PaymentProcessed → two notifications, in the request's trace.
    let notes = eventually(
        &format!("{gw}/api/notifications"),
        Some(&token),
        WAIT,
        |n| n["data"].as_array().is_some_and(|d| d.len() == 2),
    )
    .await;
    let kinds: Vec<&str> = notes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["eventType"].as_str().unwrap())
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(sorted, ["OrderCreated", "PaymentProcessed"]);
    for n in notes["data"].as_array().unwrap() {
        assert_eq!(n["userId"], user.as_str());
        assert_eq!(
            n["traceId"],
            trace_id.as_str(),
            "the trace crosses the broker: {n}"
        );
    }

    // OrderCreated → products takes the stock out (prod_001 starts at 50? read it first).
    let stock = eventually(
        &format!("{gw}/api/products/prod_011/inventory"),
        None,
        WAIT,
        |i| i["reserved"] == 0,
    )
    .await;
    assert_eq!(stock["reserved"], 0);

    // A second order whose payment fails (the fault knob, changed at run
    // time) stays CREATED and is cancelled: its stock comes back.
    let knob = |rate: f64| {
        http()
            .put(shop.url("payments", "/admin/faults"))
            .json(&json!({"failureRate": rate, "addedLatency": "0ms"}))
    };
    assert_eq!(send(knob(1.0)).await.0, 200);
    let unpaid = place(&gw, &token, &[("prod_021", 3)], None).await;
    assert_eq!(unpaid["payment"]["status"], "FAILED", "{unpaid}");
    assert_eq!(send(knob(0.0)).await.0, 200);
    let unpaid_id = unpaid["id"].as_str().unwrap();
    let (status, cancelled) = send(
        http()
            .put(format!("{gw}/api/orders/{unpaid_id}/status"))
            .bearer_auth(&token)
            .json(&json!({"status": "CANCELLED"})),
    )
    .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("CANCELLED")),
        "{cancelled}"
    );

    // A price change, through the gateway.
    let product: Value = shop_testkit::get_json(&format!("{gw}/api/products/prod_041")).await;
    let (status, _) = send(
        http()
            .put(format!("{gw}/api/products/prod_041/price"))
            .bearer_auth(&token)
            .json(&json!({"price": 12.5, "version": product["version"]})),
    )
    .await;
    assert_eq!(status, 200);

    // Every event the shop published, validated against its schema.
    let expected = [
        ("OrderCreated", 2),
        ("PaymentProcessed", 1),
        ("OrderCancelled", 1),
        // prod_001 and prod_011 taken; prod_021 taken and returned.
        ("InventoryUpdated", 4),
        ("PriceChanged", 1),
    ];
    let arrived = tap
        .wait_for(WAIT, |events| {
            expected
                .iter()
                .all(|(t, n)| events.iter().filter(|e| e.routing_key == *t).count() >= *n)
        })
        .await;
    let events = tap.events();
    assert!(
        arrived,
        "not every event arrived: {:?}",
        events.iter().map(|e| &e.routing_key).collect::<Vec<_>>()
    );
    let counts = common::assert_valid(&events);
    for (t, n) in expected {
        assert_eq!(counts.get(t).copied(), Some(n), "{t}: {counts:?}");
    }
    for e in &events {
        assert!(
            e.headers.contains_key("traceparent"),
            "{} has no trace context",
            e.routing_key
        );
    }
    let returned: Vec<&Value> = events
        .iter()
        .filter(|e| e.routing_key == "InventoryUpdated" && e.body["data"]["reason"] == "CANCELLED")
        .map(|e| &e.body)
        .collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["data"]["quantityChanged"], 3);
    let created = events
        .iter()
        .find(|e| e.routing_key == "OrderCreated" && e.body["data"]["orderId"] == order_id.as_str())
        .unwrap();
    assert!(created.headers["traceparent"].contains(&trace_id));

    // The rebuild command replays every stream; the read model is unchanged.
    let before: Value = shop_testkit::get_json(&format!(
        "{}?userId={user}",
        shop.url("orders", "/api/v1/orders")
    ))
    .await;
    let (ok, out) = shop.run_command("orders", &["orders", "rebuild-read-model"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "read model rebuilt: 2 orders");
    let after: Value = shop_testkit::get_json(&format!(
        "{}?userId={user}",
        shop.url("orders", "/api/v1/orders")
    ))
    .await;
    assert_eq!(before, after);
    assert_eq!(after["data"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_on_sqlite() {
    the_whole_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_on_postgres() {
    if TestDb::postgres().await.is_none() {
        return;
    }
    the_whole_flow(Backend::Postgres).await;
}
