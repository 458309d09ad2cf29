//! Nothing lost: RabbitMQ stopped in the middle of a burst of orders and
//! started again, the six processes on loopback, each service on its own
//! database (SQLite, then Postgres). A test binary of its own, as stopping
//! the broker would break any other test using it meanwhile; the two
//! variants take turns.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{handled, open, per_order, shop_bin};
use futures::StreamExt;
use serde_json::Value;
use shop_common::outbox;
use shop_flow::{Processes, eventually, place, sign_up};
use shop_testkit::broker::{Seen, Tap};
use shop_testkit::{TestDb, db_tests, get_json};

const BURST: usize = 200;
const IN_FLIGHT: usize = 8;
const WAIT: Duration = Duration::from_secs(120);

/// One outage at a time.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

db_tests!(nothing_is_lost_when_the_broker_goes_away_mid_burst);

async fn nothing_is_lost_when_the_broker_goes_away_mid_burst(db: TestDb) {
    let _turn = BROKER.lock().await;
    let Some(amqp) = shop_testkit::amqp_vhost() else {
        return;
    };
    let tap = Tap::start(&amqp).await;
    let shop = Processes::start(shop_bin(), db.backend, &amqp).await;
    let gw = shop.url("gateway", "");
    let (user, token) = sign_up(&gw, "burst@example.com").await;

    // A burst in four quarters: the broker is stopped while the second is
    // placed, stays down through the third, and starts again while the
    // fourth is placed. Orders never wait for the broker; their events do.
    let started = Instant::now();
    let quarter = BURST / 4;
    let mut orders = place_all(&gw, &token, 0..quarter).await;
    let (stopped, second) = tokio::join!(
        tokio::task::spawn_blocking(shop_testkit::stop_broker),
        place_all(&gw, &token, quarter..2 * quarter),
    );
    stopped.unwrap();
    orders.extend(second);
    orders.extend(place_all(&gw, &token, 2 * quarter..3 * quarter).await);
    let (started_again, fourth) = tokio::join!(
        tokio::task::spawn_blocking(shop_testkit::start_broker),
        place_all(&gw, &token, 3 * quarter..BURST),
    );
    started_again.unwrap();
    orders.extend(fourth);
    let burst_took = started.elapsed();
    assert_eq!(orders.iter().collect::<BTreeSet<_>>().len(), BURST);

    // Every order is paid (PaymentProcessed crossed the broker) and packed
    // (its fulfilment crossed order_processing); every notification is there.
    let list = shop.url("orders", &format!("/api/v1/orders?userId={user}"));
    eventually(&list, None, WAIT, |l| {
        l["data"].as_array().is_some_and(|d| {
            d.len() == BURST
                && d.iter()
                    .all(|o| o["status"] == "PAID" && o["packedAt"].is_string())
        })
    })
    .await;
    let notes_url = shop.url(
        "notifications",
        &format!("/api/v1/notifications?userId={user}"),
    );
    let notes = eventually(&notes_url, None, WAIT, |n| {
        n["data"].as_array().is_some_and(|d| d.len() >= 2 * BURST)
    })
    .await;
    let settled_after = started.elapsed();

    // On the wire: each order's events, under one event id each. A copy
    // whose confirm was lost in the outage may arrive twice, never a new id.
    let complete = |events: &[Seen]| {
        ["OrderCreated", "PaymentProcessed", "InventoryUpdated"]
            .iter()
            .all(|t| per_order(events, t).0.len() >= BURST)
    };
    assert!(
        tap.wait_for(WAIT, complete).await,
        "not every event reached the tap"
    );
    let events = tap.events();
    common::assert_valid(&events);
    let mut duplicates = 0;
    for event_type in ["OrderCreated", "PaymentProcessed"] {
        let (ids, copies) = per_order(&events, event_type);
        let expected: BTreeSet<&str> = orders.iter().map(String::as_str).collect();
        assert_eq!(
            ids.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            expected
        );
        for (order, ids) in &ids {
            assert_eq!(
                ids.len(),
                1,
                "{event_type} of {order} under several ids: {ids:?}"
            );
        }
        duplicates += copies - ids.len();
    }

    // Consumed once each: one notification per event id, one PAID per
    // payment, one stock commit per order.
    let notes = notes["data"].as_array().unwrap();
    assert_eq!(notes.len(), 2 * BURST, "no event notified twice");
    let noted: BTreeSet<&str> = notes
        .iter()
        .map(|n| n["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(noted.len(), 2 * BURST);
    let orders_db = open(&shop.db.orders, &orders::MIGRATOR).await;
    assert_eq!(
        handled(&orders_db, orders::consumers::PAYMENTS_QUEUE).await,
        BURST as i64
    );
    let products_db = open(&shop.db.products, &products::MIGRATOR).await;
    assert_eq!(
        handled(&products_db, products::ORDERS_QUEUE).await,
        BURST as i64
    );
    let payments_db = open(&shop.db.payments, &payments::MIGRATOR).await;
    let mut republished = 0;
    for db in [&orders_db, &products_db, &payments_db] {
        assert_eq!(
            outbox::pending(db).await.unwrap(),
            0,
            "an outbox still holds messages"
        );
        republished += outbox::attempts(db)
            .await
            .unwrap()
            .iter()
            .filter(|(_, n)| *n > 1)
            .count();
    }
    let stock: Value = get_json(&shop.url("products", "/api/v1/products/prod_001/inventory")).await;
    assert_eq!(stock["reserved"], 0, "every reservation committed: {stock}");

    println!(
        "burst of {BURST} orders with the broker stopped and started: placed in {:.2} s \
         ({:.0} orders/s); every event consumed {:.2} s after the first order; \
         {republished} messages took more than one publishing attempt, {duplicates} duplicate \
         deliveries absorbed",
        burst_took.as_secs_f64(),
        BURST as f64 / burst_took.as_secs_f64(),
        settled_after.as_secs_f64(),
    );
}

/// Places one order per index (one unit of prod_001 or prod_002), eight at
/// a time; their ids.
async fn place_all(gw: &str, token: &str, range: std::ops::Range<usize>) -> Vec<String> {
    futures::stream::iter(range)
        .map(|i| async move {
            let product = if i % 2 == 0 { "prod_001" } else { "prod_002" };
            let order = place(gw, token, &[(product, 1)], None).await;
            assert_eq!(order["payment"]["status"], "COMPLETED", "{order}");
            order["id"].as_str().unwrap().to_string()
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}
