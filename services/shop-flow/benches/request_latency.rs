//! Request latency on loopback: the shop in one process (SQLite, no
//! broker), requests one after another, percentiles printed.
//!
//!     cargo bench -p shop-flow --bench request_latency [-- <requests per kind>]

use serde_json::json;
use shop_common::config::ProxySettings;
use shop_flow::Shop;
use shop_flow::measure::measure;
use shop_proto::product::v1::GetProductRequest;
use shop_proto::product::v1::product_service_client::ProductServiceClient;
use shop_testkit::{Backend, http};

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; the count is the first number.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let shop = Shop::start(Backend::Sqlite, None).await;
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
