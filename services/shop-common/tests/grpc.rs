//! A gRPC channel with `TRELLIS_OUTBOUND` set connects to the sidecar's
//! outbound port and names the target service in `:authority`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use shop_common::config::ProxySettings;
use shop_common::grpc;
use shop_proto::product::v1::GetProductRequest;
use shop_proto::product::v1::product_service_client::ProductServiceClient;
use shop_testkit::Running;
use tracing::Instrument;

#[derive(Debug, Clone)]
struct Seen {
    authority: String,
    path: String,
    traceparent: Option<String>,
}

/// An h2c server standing in for the outbound port: it records the call
/// and answers it trailers-only with NOT_FOUND.
async fn outbound() -> (Running, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(Seen {
                authority: req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                path: req.uri().path().to_string(),
                traceparent: req
                    .headers()
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_string()),
            });
            (
                [
                    ("content-type", "application/grpc"),
                    ("grpc-status", "5"),
                    ("grpc-message", "recorded"),
                ],
                "",
            )
                .into_response()
        }
    });
    let running = Running::router(app).await;
    (running, seen)
}

#[tokio::test]
async fn calls_go_through_the_outbound_port_by_service_name() {
    shop_common::telemetry::init_for_tests();
    let (sidecar, seen) = outbound().await;
    let proxy = ProxySettings {
        http_proxy: None,
        no_proxy: Some("localhost,127.0.0.1,::1".into()),
        outbound: Some(sidecar.addr.to_string()),
    };
    // `products` resolves nowhere here: only the outbound port can answer.
    let channel = grpc::channel("http://products", &proxy).unwrap();
    let mut client = ProductServiceClient::new(channel);
    let status = client
        .get_product(GetProductRequest {
            product_id: "prod_001".into(),
        })
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "recorded");
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.authority, "products");
    assert_eq!(seen.path, "/product.v1.ProductService/GetProduct");
    let traceparent = seen.traceparent.expect("the call carries trace context");
    assert!(traceparent.starts_with("00-"), "{traceparent}");
}
