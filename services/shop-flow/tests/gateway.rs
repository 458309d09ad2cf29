//! The gateway in front of the real services on loopback (their databases
//! on SQLite and on Postgres): routing, auth, identity, aggregation.

use std::time::Duration;

use serde_json::{Value, json};
use shop_common::auth::{Claims, Tokens, unix_now};
use shop_flow::{Options, SECRET, Shop, get_json_with};
use shop_testkit::{Running, TestDb, assert_problem, db_tests, get_json, http, send};

db_tests!(
    product_reads_are_public_and_link_through_the_gateway,
    users_need_a_valid_token,
    product_writes_need_a_token,
    the_user_id_upstream_comes_from_the_token,
    a_users_orders_come_from_orders,
    orders_come_with_product_details,
    a_failed_product_is_a_warning_not_an_error,
    products_come_with_inventory,
    bodies_stream_through_with_a_cap,
);

fn tokens() -> Tokens {
    Tokens::new(SECRET.as_bytes())
}

async fn product_reads_are_public_and_link_through_the_gateway(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let r = http()
        .get(shop.url("/api/products?category=toys&limit=4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-trace-id"].len(), 32);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["meta"]["totalCount"], 10);
    assert_eq!(
        list["links"]["next"],
        "/api/products?category=toys&page=2&limit=4"
    );
    // Following the link through the gateway works.
    let next: Value = http()
        .get(shop.url(list["links"]["next"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["meta"]["page"], 2);
    let one: Value = get_json(&shop.url("/api/products/prod_051")).await;
    assert_eq!(
        one["_links"]["inventory"],
        "/api/products/prod_051/inventory"
    );
    let bad = http()
        .get(shop.url("/api/products?limit=10000"))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400, Some("limit")).await;
    assert_problem(
        http().get(shop.url("/api/nothing")).send().await.unwrap(),
        404,
        None,
    )
    .await;
}

async fn users_need_a_valid_token(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (id, token) = shop.sign_up("alan@example.com").await;
    let url = shop.url(&format!("/api/users/{id}"));
    let get = |auth: Option<String>| {
        let mut r = http().get(&url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let me: Value = get(Some(format!("Bearer {token}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "alan@example.com");

    let missing = assert_problem(get(None).await.unwrap(), 401, None).await;
    assert_eq!(missing["detail"], "a bearer token is required");
    let expired = tokens().sign(&Claims {
        sub: id.clone(),
        iat: unix_now() - 7200,
        exp: unix_now() - 3600,
    });
    let expired = assert_problem(
        get(Some(format!("Bearer {expired}"))).await.unwrap(),
        401,
        None,
    )
    .await;
    assert_eq!(expired["detail"], "the token has expired");
    let forged = shop_common::auth::Tokens::new(b"not the gateway's secret, 32 bytes")
        .issue(&id, Duration::from_secs(60));
    assert_problem(
        get(Some(format!("Bearer {forged}"))).await.unwrap(),
        401,
        None,
    )
    .await;
    assert_problem(get(Some("Bearer garbage".into())).await.unwrap(), 401, None).await;
    assert_problem(
        get(Some(format!("Basic {token}"))).await.unwrap(),
        401,
        None,
    )
    .await;
    let r = get(None).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
}

async fn product_writes_need_a_token(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let put = |token: Option<&str>| {
        let mut r = http()
            .put(shop.url("/api/products/prod_052/inventory"))
            .json(&json!({"stock": 1, "version": 1}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_problem(put(None).await.unwrap(), 401, None).await;
    let (_, token) = shop.sign_up("grace@example.com").await;
    let r = put(Some(&token)).await.unwrap();
    assert_eq!(r.status(), 200);
    let inventory: Value = r.json().await.unwrap();
    assert_eq!(
        (inventory["stock"].as_i64(), inventory["version"].as_i64()),
        (Some(1), Some(2))
    );
}

async fn the_user_id_upstream_comes_from_the_token(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (id, token) = shop.sign_up("mallory@example.com").await;
    // A client's own X-User-Id is replaced by the token's: orders sees
    // mallory asking for someone else's orders.
    let r = http()
        .get(shop.url("/api/orders?userId=usr_someone_else"))
        .bearer_auth(&token)
        .header("x-user-id", "usr_someone_else")
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, None).await;
    let mine: Value = get_json_with(&shop.url("/api/orders"), &token).await;
    assert_eq!(mine["data"], json!([]));
    // users' own call to orders carries the token on.
    let r = http()
        .get(shop.url(&format!("/api/users/{id}/orders")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["orders"], json!([]));
}

async fn a_users_orders_come_from_orders(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (id, token) = shop.sign_up("barbara@example.com").await;
    let first = shop.place(&token, &[("prod_001", 1)]).await;
    let second = shop
        .place(&token, &[("prod_002", 2), ("prod_003", 1)])
        .await;
    let (_, other) = shop.sign_up("someone@example.com").await;
    shop.place(&other, &[("prod_004", 1)]).await;
    let body = get_json_with(&shop.url(&format!("/api/users/{id}/orders")), &token).await;
    assert_eq!(body["userId"], id.as_str());
    let ids: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [&second["id"], &first["id"]].map(|v| v.as_str().unwrap()),
        "newest first"
    );
    assert_eq!(body["orders"][0]["items"][1]["productId"], "prod_003");
    // Without a broker nothing marks them PAID: they stay CREATED.
    assert_eq!(body["orders"][0]["status"], "CREATED");
    let theirs = http()
        .get(shop.url("/api/users/usr_nobody/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(theirs, 403, None).await;
}

async fn orders_come_with_product_details(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (_, token) = shop.sign_up("ada@example.com").await;
    let order = shop
        .place(&token, &[("prod_001", 2), ("prod_011", 1)])
        .await;
    let url = shop.url(&format!(
        "/api/orders/{}/with-product-details",
        order["id"].as_str().unwrap()
    ));
    assert_problem(http().get(&url).send().await.unwrap(), 401, None).await;
    let r = http().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], order["id"]);
    assert_eq!(body["warnings"], json!([]));
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["product"]["name"], "Wireless Earbuds");
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(
        items[1]["product"]["name"],
        "Designing Data-Intensive Applications"
    );
    // Links in the details lead through the gateway.
    assert_eq!(
        items[0]["product"]["_links"]["self"],
        "/api/products/prod_001"
    );

    let unknown = http()
        .get(shop.url("/api/orders/ord_404/with-product-details"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, None).await;
}

/// An order naming a product the catalogue no longer has (the real orders
/// service cannot be made to answer that, so a fixed answer stands in).
async fn order_with_a_vanished_product(user: &str) -> Running {
    let order = json!({"id": "ord_2", "userId": user, "status": "CREATED", "totalAmount": 3.0,
        "items": [{"productId": "prod_002", "quantity": 1, "price": 1.0},
                  {"productId": "prod_gone", "quantity": 3, "price": 1.0}]});
    let app = axum::Router::new().route(
        "/api/v1/orders/ord_2",
        axum::routing::get(move || {
            let order = order.clone();
            async move { axum::Json(order) }
        }),
    );
    Running::router(app).await
}

async fn a_failed_product_is_a_warning_not_an_error(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let (id, token) = shop.sign_up("barbara@example.com").await;
    let orders = order_with_a_vanished_product(&id).await;
    let mut config = shop_flow::gateway_config();
    config.products_url = shop.products.url("");
    config.orders_url = orders.url("");
    let gateway = Running::start(move |l, s| gateway::run(config, l, s)).await;
    let body: Value = send(
        http()
            .get(gateway.url("/api/orders/ord_2/with-product-details"))
            .bearer_auth(&token),
    )
    .await
    .1;
    assert_eq!(body["items"][0]["product"]["id"], "prod_002");
    assert_eq!(body["items"][1]["product"], Value::Null);
    assert_eq!(body["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(body["warnings"][0]["part"], "product prod_gone");
    assert_eq!(body["warnings"][0]["status"], 404);

    // With products down, the order still comes, every item flagged.
    shop.products.stop().await.unwrap();
    let body: Value = send(
        http()
            .get(gateway.url("/api/orders/ord_2/with-product-details"))
            .bearer_auth(&token),
    )
    .await
    .1;
    assert_eq!(body["id"], "ord_2");
    let warnings = body["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2);
    assert!(warnings.iter().all(|w| w["status"] == 503), "{warnings:?}");
}

async fn products_come_with_inventory(db: TestDb) {
    let shop = Shop::start(db.backend, None).await;
    let body: Value = get_json(&shop.url("/api/products/prod_053/with-inventory")).await;
    assert_eq!(body["id"], "prod_053");
    assert_eq!(body["inventory"]["stock"], 70);
    assert_eq!(
        body["inventory"]["_links"]["self"],
        "/api/products/prod_053/inventory"
    );
    assert_eq!(body["warnings"], json!([]));
    let unknown = http()
        .get(shop.url("/api/products/prod_999/with-inventory"))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, None).await;
}

async fn bodies_stream_through_with_a_cap(db: TestDb) {
    let shop = Shop::start_with(
        db.backend,
        Options {
            gateway: Box::new(|c| c.max_body_bytes = 1024),
            ..Options::new(None)
        },
    )
    .await;
    // A chunked request body (no Content-Length) is streamed to users.
    let chunks = vec![
        Ok::<_, std::io::Error>(r#"{"email": "stream@example.com", "#.to_string()),
        Ok(r#""password": "long enough", "name": "S"}"#.to_string()),
    ];
    let r = http()
        .post(shop.url("/api/users"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let big = format!(
        r#"{{"email": "big@example.com", "password": "long enough", "name": "{}"}}"#,
        "n".repeat(2000)
    );
    let declared = http()
        .post(shop.url("/api/users"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(declared, 413, Some("body")).await;
    let chunked = http()
        .post(shop.url("/api/users"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(vec![
            Ok::<_, std::io::Error>(big),
        ])))
        .send()
        .await
        .unwrap();
    assert_problem(chunked, 413, Some("body")).await;
    // Nothing of the refused registrations arrived.
    let login = http()
        .post(shop.url("/api/auth/login"))
        .json(&json!({"email": "big@example.com", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401);
}
