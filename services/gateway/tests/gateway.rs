//! The gateway in front of the real services on loopback (their databases
//! on SQLite and on Postgres): routing, auth, aggregation; and, on a
//! gateway of its own, rate limiting, CORS and failing upstreams.

mod common;

use std::time::Duration;

use common::{Shop, gateway_config, start_gateway, tokens};
use serde_json::{Value, json};
use shop_common::auth::{Claims, unix_now};
use shop_testkit::{TestDb, assert_problem, closed_port, db_tests, get_json, http, send};

db_tests!(
    product_reads_are_public_and_link_through_the_gateway,
    users_need_a_valid_token,
    product_writes_need_a_token,
    the_user_id_upstream_comes_from_the_token,
    orders_come_with_product_details,
    a_failed_product_is_a_warning_not_an_error,
    products_come_with_inventory,
    bodies_stream_through_with_a_cap,
);

async fn product_reads_are_public_and_link_through_the_gateway(db: TestDb) {
    let shop = Shop::start(db).await;
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
    let shop = Shop::start(db).await;
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
    let shop = Shop::start(db).await;
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
    let shop = Shop::start(db).await;
    let (id, token) = shop.sign_up("mallory@example.com").await;
    let r = http()
        .get(shop.url("/api/orders?userId=usr_someone_else"))
        .bearer_auth(&token)
        .header("x-user-id", "usr_someone_else")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = shop
        .orders
        .requests
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(seen["x-user-id"], id.as_str());
    assert_eq!(seen["authorization"], format!("Bearer {token}").as_str());
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-prefix"], "/api/orders");
    assert!(seen.contains_key("traceparent"));

    // users' own call to orders carries the token on.
    let mine = http()
        .get(shop.url(&format!("/api/users/{id}/orders")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    let body: Value = mine.json().await.unwrap();
    assert_eq!(body["orders"], json!([]));
}

fn order(id: &str, user: &str, products: &[(&str, u32)]) -> Value {
    let items: Vec<Value> = products
        .iter()
        .map(|(p, q)| json!({"productId": p, "quantity": q, "price": 1.0}))
        .collect();
    json!({"id": id, "userId": user, "items": items, "totalAmount": 3.0, "status": "CREATED"})
}

async fn orders_come_with_product_details(db: TestDb) {
    let shop = Shop::start(db).await;
    let (id, token) = shop.sign_up("ada@example.com").await;
    shop.orders.add(order(
        "ord_1",
        &id,
        &[("prod_001", 2), ("prod_011", 1), ("prod_001", 1)],
    ));
    let url = shop.url("/api/orders/ord_1/with-product-details");
    assert_problem(http().get(&url).send().await.unwrap(), 401, None).await;
    let r = http().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "ord_1");
    assert_eq!(body["warnings"], json!([]));
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["product"]["name"], "Wireless Earbuds");
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(
        items[1]["product"]["name"],
        "Designing Data-Intensive Applications"
    );
    assert_eq!(items[2]["product"]["id"], "prod_001");
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

async fn a_failed_product_is_a_warning_not_an_error(db: TestDb) {
    let shop = Shop::start(db).await;
    let (id, token) = shop.sign_up("barbara@example.com").await;
    shop.orders
        .add(order("ord_2", &id, &[("prod_002", 1), ("prod_gone", 3)]));
    let body: Value = send(
        http()
            .get(shop.url("/api/orders/ord_2/with-product-details"))
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
    let products = shop.products;
    products.stop().await.unwrap();
    let body: Value = send(
        http()
            .get(shop.gateway.url("/api/orders/ord_2/with-product-details"))
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
    let shop = Shop::start(db).await;
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
    let shop = Shop::start_with(db, |c| c.max_body_bytes = 1024).await;
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

#[tokio::test]
async fn each_client_has_its_own_token_bucket() {
    let closed = format!("http://{}", closed_port().await);
    let mut config = gateway_config(&closed);
    config.rate_per_second = std::num::NonZeroU32::new(1).unwrap();
    config.rate_burst = std::num::NonZeroU32::new(3).unwrap();
    let gateway = start_gateway(config).await;
    let hit = |client: &'static str| {
        http()
            .get(gateway.url("/api/orders"))
            .header("x-forwarded-for", client)
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(hit("198.51.100.1").await.unwrap().status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401],
        "within the burst the request goes on (to auth)"
    );
    // The bucket refills one token a second; a slow machine may earn one back.
    let mut limited = hit("198.51.100.1").await.unwrap();
    if limited.status() != 429 {
        limited = hit("198.51.100.1").await.unwrap();
    }
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_problem(limited, 429, None).await;
    // Another client is not affected.
    assert_eq!(hit("198.51.100.2").await.unwrap().status(), 401);
    // Health is never limited.
    assert_eq!(
        http()
            .get(gateway.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_responses() {
    let closed = format!("http://{}", closed_port().await);
    let mut config = gateway_config(&closed);
    config.cors_origins = vec!["https://shop.example".into()];
    let gateway = start_gateway(config).await;
    let preflight = http()
        .request(
            reqwest::Method::OPTIONS,
            gateway.url("/api/products/prod_001/inventory"),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PUT")
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    // Errors carry CORS headers too, so a browser can read them.
    let denied = http()
        .get(gateway.url("/api/orders"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let exposed = denied.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");

    let stranger = http()
        .get(gateway.url("/api/orders"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        stranger
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn public_routes_carry_no_client_claimed_identity() {
    let (products, seen) = shop_testkit::recorder().await;
    let mut config = gateway_config(&format!("http://{}", closed_port().await));
    config.products_url = products.url("");
    let gateway = start_gateway(config).await;
    let r = http()
        .get(gateway.url("/api/products/prod_001?fields=all"))
        .header("x-user-id", "usr_admin")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "recorded");
    let (uri, headers) = seen.lock().unwrap()[0].clone();
    assert_eq!(uri, "/api/v1/products/prod_001?fields=all");
    assert!(!headers.contains_key("x-user-id"), "{headers:?}");
    assert!(
        !headers.contains_key("x-private"),
        "hop-by-hop headers stay behind"
    );
    assert_eq!(headers["x-forwarded-prefix"], "/api/products");
    assert_eq!(headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn an_unreachable_service_is_a_503_naming_it() {
    let closed = format!("http://{}", closed_port().await);
    let gateway = start_gateway(gateway_config(&closed)).await;
    let token = tokens().issue("usr_1", Duration::from_secs(60));
    let r = http()
        .post(gateway.url("/api/payments"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(r, 503, None).await;
    assert_eq!(problem["detail"], "the payments service is unavailable");
    let r = http()
        .get(gateway.url("/api/products/prod_001/with-inventory"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 503, None).await;
}

#[tokio::test]
async fn a_hanging_service_is_a_504() {
    let (silent, _hold) = shop_testkit::silent_server().await;
    let mut config = gateway_config(&format!("http://{silent}"));
    config.upstream_timeout = Duration::from_millis(300);
    let gateway = start_gateway(config).await;
    let r = http()
        .get(gateway.url("/api/products"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(r, 504, None).await;
    assert_eq!(
        problem["detail"],
        "the products service did not answer in time"
    );
}

#[tokio::test]
async fn documents_its_own_endpoints() {
    let closed = format!("http://{}", closed_port().await);
    let gateway = start_gateway(gateway_config(&closed)).await;
    let doc: Value = get_json(&gateway.url("/openapi.json")).await;
    assert!(doc["paths"]["/api/orders/{id}/with-product-details"]["get"].is_object());
    assert!(doc["paths"]["/api/products/{id}/with-inventory"]["get"].is_object());
}
