//! The server and the HTTP client over real loopback connections: problem
//! answers, trace propagation, the proxy settings, graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use shop_common::config::ProxySettings;
use shop_common::extract::{Json, Query};
use shop_common::health::Health;
use shop_common::http_client::HttpClient;
use shop_common::server::{self, App};
use shop_testkit::{Running, assert_problem, get_json, http, recorder};

/// Serves `router` the way every service is served.
async fn start(router: Router) -> Running {
    let app = App {
        router,
        health: Health::new(),
        openapi: Default::default(),
    };
    Running::start(move |listener, shutdown| async move {
        server::serve(listener, app, shutdown, Duration::from_secs(5)).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn calls_by_service_name_go_through_http_proxy() {
    let (sidecar, seen) = recorder().await;
    let proxy = ProxySettings {
        http_proxy: Some(sidecar.url("")),
        no_proxy: Some("localhost,127.0.0.1,::1".into()),
        outbound: None,
    };
    let client = HttpClient::new(&proxy, Duration::from_secs(2)).unwrap();
    let body = client
        .get("http://orders/api/v1/orders?userId=u1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "recorded");
    let (uri, headers) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        uri, "http://orders/api/v1/orders?userId=u1",
        "absolute-form to the proxy"
    );
    assert_eq!(headers["host"], "orders");

    // NO_PROXY hosts are called directly.
    let (direct, direct_seen) = recorder().await;
    client.get(&direct.url("/x")).send().await.unwrap();
    assert_eq!(direct_seen.lock().unwrap()[0].0, "/x");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the proxy saw no second call"
    );
}

#[tokio::test]
async fn trace_context_flows_from_caller_to_callee() {
    shop_common::telemetry::init_for_tests();
    let (callee, seen) = recorder().await;
    let client = HttpClient::new(&ProxySettings::default(), Duration::from_secs(2)).unwrap();
    let callee_url = callee.url("/downstream");
    let router = server::router()
        .route(
            "/upstream",
            get(move |State(client): State<HttpClient>| {
                let url = callee_url.clone();
                async move {
                    client
                        .get(&url)
                        .send()
                        .await
                        .map(|_| "ok")
                        .unwrap_or("failed")
                }
            }),
        )
        .with_state(client);
    let service = start(router).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = http()
        .get(service.url("/upstream"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-trace-id"], trace_id);
    assert_eq!(response.text().await.unwrap(), "ok");
    let (_, headers) = seen.lock().unwrap()[0].clone();
    let sent = headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        parts[1], trace_id,
        "the callee is in the caller's trace: {sent}"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "with the service's own span as parent"
    );
    assert_eq!(parts[3], "01", "still sampled");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Item {
    name: String,
    quantity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Paging {
    page: Option<u32>,
}

async fn bad_input_service() -> Running {
    let router = server::router()
        .route(
            "/items",
            post(
                |Json(item): Json<Item>| async move { format!("{} x{}", item.name, item.quantity) },
            ),
        )
        .route(
            "/items",
            get(|Query(p): Query<Paging>| async move { format!("page {:?}", p.page) }),
        );
    start(router).await
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let service = bad_input_service().await;
    let post = |body: &'static str| {
        http()
            .post(service.url("/items"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let ok = post(r#"{"name":"pen","quantity":2}"#).await.unwrap();
    assert_eq!(ok.text().await.unwrap(), "pen x2");
    assert_problem(
        post(r#"{"name":"pen","quantity":"two"}"#).await.unwrap(),
        400,
        Some("quantity"),
    )
    .await;
    assert_problem(post(r#"{"quantity":2}"#).await.unwrap(), 400, Some("name")).await;
    assert_problem(
        post(r#"{"name":"pen","quantity":2,"admin":true}"#)
            .await
            .unwrap(),
        400,
        Some("admin"),
    )
    .await;
    assert_problem(post(r#"{"name":"pen","#).await.unwrap(), 400, Some("body")).await;

    let plain = http()
        .post(service.url("/items"))
        .body(r#"{"name":"pen","quantity":2}"#)
        .send()
        .await
        .unwrap();
    assert_problem(plain, 415, Some("Content-Type")).await;
    let huge = format!(
        r#"{{"name":"{}","quantity":1}}"#,
        "x".repeat(shop_common::extract::DEFAULT_BODY_LIMIT)
    );
    let too_big = http()
        .post(service.url("/items"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(too_big, 413, Some("body")).await;

    let query = http()
        .get(service.url("/items?page=zero"))
        .send()
        .await
        .unwrap();
    assert_problem(query, 400, Some("page")).await;
    let unknown = http().get(service.url("/nowhere")).send().await.unwrap();
    assert_problem(unknown, 404, None).await;
    let wrong_method = http().delete(service.url("/items")).send().await.unwrap();
    assert_problem(wrong_method, 405, None).await;
}

#[tokio::test]
async fn health_and_openapi_are_served() {
    let service = bad_input_service().await;
    let live = http()
        .get(service.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready: serde_json::Value = get_json(&service.url("/health/ready")).await;
    assert_eq!(ready["status"], "UP");
    let doc = http()
        .get(service.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    let doc: serde_json::Value = doc.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let router = server::router().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let service = start(router).await;
    let url = service.url("/slow");
    let in_flight = tokio::spawn(async move { http().get(url).send().await?.text().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = service.addr;
    service.stop().await.unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), "done");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn readiness_fails_while_draining() {
    let health = Health::new();
    assert!(health.report().await.0);
    health.start_draining();
    assert!(!health.report().await.0);
}
