//! The gateway on its own, in front of recorders and unreachable or hanging
//! upstreams: rate limiting, CORS, identity headers, failing upstreams, its
//! OpenAPI document. (The gateway in front of the real services is tested
//! in `services/shop-flow/tests/gateway.rs`.)

mod common;

use std::time::Duration;

use common::{gateway_config, start_gateway, tokens};
use serde_json::{Value, json};
use shop_testkit::{assert_problem, closed_port, get_json, http};

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
