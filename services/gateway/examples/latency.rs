//! Request latency on loopback: products and users (SQLite) and the gateway
//! in one process, requests one after another, percentiles printed.
//!
//!     cargo run --release -p gateway --example latency [-- <requests per kind>]

use std::time::{Duration, Instant};

use serde_json::json;
use shop_common::config::ProxySettings;
use shop_proto::product::v1::GetProductRequest;
use shop_proto::product::v1::product_service_client::ProductServiceClient;
use shop_testkit::{TestDb, http};

#[path = "../tests/common/mod.rs"]
mod common;

/// Runs `call` `n` times after a warm-up; prints p50/p90/p99/max.
async fn measure<F, Fut>(name: &str, n: usize, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n.min(50) {
        call().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        call().await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<46} n={n:<5} p50={:>7.3} ms  p90={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let shop = common::Shop::start_with(TestDb::sqlite(), |c| {
        c.rate_per_second = std::num::NonZeroU32::MAX;
        c.rate_burst = std::num::NonZeroU32::MAX;
    })
    .await;
    let (products, gateway) = (&shop.products, &shop.gateway);
    let client = http();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.expect("a response");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("a body");
        }
    };
    println!("sequential requests over loopback, keep-alive connections");
    measure("products  GET /api/v1/products/{id}", n, || {
        get(products.url("/api/v1/products/prod_001"))
    })
    .await;
    measure("gateway   GET /api/products/{id}", n, || {
        get(gateway.url("/api/products/prod_001"))
    })
    .await;
    measure("gateway   GET /api/products?limit=20", n, || {
        get(gateway.url("/api/products?limit=20"))
    })
    .await;
    measure("gateway   GET /api/products/{id}/with-inventory", n, || {
        get(gateway.url("/api/products/prod_001/with-inventory"))
    })
    .await;

    let channel = shop_common::grpc::channel(&products.url(""), &ProxySettings::default())
        .expect("a channel");
    let grpc = ProductServiceClient::new(channel);
    measure("products  gRPC GetProduct", n, || {
        let mut grpc = grpc.clone();
        async move {
            grpc.get_product(GetProductRequest {
                product_id: "prod_001".into(),
            })
            .await
            .expect("a product");
        }
    })
    .await;

    let r = client
        .post(gateway.url("/api/users"))
        .json(&json!({"email": "bench@example.com", "password": "benchmark!", "name": "Bench"}))
        .send()
        .await
        .expect("registered");
    assert_eq!(r.status(), 201);
    measure(
        "gateway   POST /api/auth/login (argon2id)",
        n.min(200),
        || {
            let client = client.clone();
            let url = gateway.url("/api/auth/login");
            async move {
                let r = client
                    .post(url)
                    .json(&json!({"email": "bench@example.com", "password": "benchmark!"}))
                    .send()
                    .await
                    .expect("a response");
                assert_eq!(r.status(), 200);
            }
        },
    )
    .await;
}
