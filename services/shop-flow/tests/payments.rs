//! payments in front of the real orders (SQLite and Postgres), through the
//! gateway: the amount must be the order's total, the Idempotency-Key makes
//! a retry return the first payment, an order is paid once, and the fault
//! knob changes at run time.

use serde_json::{Value, json};
use shop_flow::Shop;
use shop_testkit::{TestDb, db_tests, get_json, http, send};

db_tests!(
    a_payment_is_checked_against_its_order_and_made_once,
    the_fault_knob_changes_at_run_time,
);

async fn knob(shop: &Shop, settings: Value) -> (u16, Value) {
    send(
        http()
            .put(shop.payments.url("/admin/faults"))
            .json(&settings),
    )
    .await
}

async fn pay(shop: &Shop, token: &str, key: Option<&str>, body: Value) -> (u16, Value, bool) {
    let mut request = http()
        .post(shop.url("/api/payments"))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

/// An order of `token`'s user that is placed but not paid (every charge
/// fails while it is placed); its id and total.
async fn unpaid_order(shop: &Shop, token: &str) -> (String, f64) {
    let all = json!({"failureRate": 1.0, "addedLatency": "0ms"});
    assert_eq!(knob(shop, all).await.0, 200);
    let order = shop.place(token, &[("prod_006", 2)]).await;
    assert_eq!(order["payment"]["status"], "FAILED", "{order}");
    let none = json!({"failureRate": 0.0, "addedLatency": "0ms"});
    assert_eq!(knob(shop, none).await.0, 200);
    (
        order["id"].as_str().unwrap().to_string(),
        order["totalAmount"].as_f64().unwrap(),
    )
}

async fn a_payment_is_checked_against_its_order_and_made_once(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (user, token) = shop.sign_up("payer@example.com").await;
    let (order, total) = unpaid_order(&shop, &token).await;
    let body = |amount: f64| json!({"orderId": order, "amount": amount});

    let (status, problem, _) = pay(&shop, &token, None, body(total)).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    let (status, problem, _) = pay(&shop, &token, Some("k1"), body(total + 1.0)).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "amount");
    let (status, problem, _) = pay(
        &shop,
        &token,
        Some("k0"),
        json!({"orderId": "ord_nope", "amount": 1.0}),
    )
    .await;
    assert!([404, 422].contains(&status), "{status} {problem}");

    let (status, paid, replayed) = pay(&shop, &token, Some("k1"), body(total)).await;
    assert_eq!((status, replayed), (201, false), "{paid}");
    assert_eq!(paid["userId"], user.as_str());
    assert_eq!(paid["amount"].as_f64(), Some(total));
    assert_eq!(paid["status"], "COMPLETED");
    // The retry: the same payment, not a second one.
    let (status, again, replayed) = pay(&shop, &token, Some("k1"), body(total)).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again["id"], paid["id"]);
    // The key for another request, and another key for a paid order.
    let (status, problem, _) = pay(&shop, &token, Some("k1"), body(total - 1.0)).await;
    assert_eq!(status, 422);
    assert_eq!(problem["type"], "urn:shop:problem:idempotency-key-reused");
    let (status, problem, _) = pay(&shop, &token, Some("k2"), body(total)).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["paymentId"], paid["id"]);

    let id = paid["id"].as_str().unwrap();
    let (status, read) = send(
        http()
            .get(shop.url(&format!("/api/payments/{id}")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!((status, &read["orderId"]), (200, &json!(order)));
    let (status, _) = send(
        http()
            .get(shop.url("/api/payments/pay_nope"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 404);
}

async fn the_fault_knob_changes_at_run_time(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (_, token) = shop.sign_up("knob@example.com").await;
    let (order, total) = unpaid_order(&shop, &token).await;
    let body = json!({"orderId": order, "amount": total});

    let (status, shown) = knob(&shop, json!({"failureRate": 1.0, "addedLatency": "20ms"})).await;
    assert_eq!(status, 200);
    assert_eq!(shown, json!({"failureRate": 1.0, "addedLatency": "20ms"}));
    assert_eq!(get_json(&shop.payments.url("/admin/faults")).await, shown);
    let (status, problem, _) = pay(&shop, &token, Some("k1"), body.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(problem["type"], "urn:shop:problem:injected-fault");

    // Bad settings are refused and change nothing.
    let (status, problem) = knob(&shop, json!({"failureRate": 2, "addedLatency": "0ms"})).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "failureRate");
    assert_eq!(get_json(&shop.payments.url("/admin/faults")).await, shown);

    let (status, _) = knob(&shop, json!({"failureRate": "0%", "addedLatency": "0ms"})).await;
    assert_eq!(status, 400, "a rate is a number in the body");
    let (status, _) = knob(&shop, json!({"failureRate": 0.0, "addedLatency": "0ms"})).await;
    assert_eq!(status, 200);
    let (status, paid, _) = pay(&shop, &token, Some("k1"), body).await;
    assert_eq!(status, 201, "{paid}");
}
