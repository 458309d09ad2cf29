//! ProductService with a real tonic client, on SQLite and on Postgres.

mod common;

use std::time::Duration;

use serde_json::json;
use shop_common::config::ProxySettings;
use shop_proto::product::v1::product_service_client::ProductServiceClient;
use shop_proto::product::v1::{GetProductRequest, SearchProductsRequest};
use shop_testkit::{Running, TestDb, db_tests, http, send};
use tonic::Code;

db_tests!(
    joins_the_callers_trace,
    gets_and_searches,
    rejects_bad_searches,
    price_updates_stream_within_a_second,
    streams_end_at_shutdown
);

type Client = ProductServiceClient<shop_common::grpc::TracedChannel>;

fn client(svc: &Running) -> Client {
    let channel = shop_common::grpc::channel(&svc.url(""), &ProxySettings::default()).unwrap();
    ProductServiceClient::new(channel)
}

async fn joins_the_callers_trace(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut request = tonic::Request::new(GetProductRequest {
        product_id: "prod_001".into(),
    });
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    // A plain channel: the caller's own traceparent, nothing added.
    let channel = tonic::transport::Endpoint::from_shared(svc.url(""))
        .unwrap()
        .connect_lazy();
    let response = ProductServiceClient::new(channel)
        .get_product(request)
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-trace-id").unwrap(), trace_id);
}

async fn gets_and_searches(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut c = client(&svc);
    let p = c
        .get_product(GetProductRequest {
            product_id: "prod_012".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            p.name.as_str(),
            p.price,
            p.category.as_str(),
            p.in_stock,
            p.stock
        ),
        ("The Rust Programming Language", 39.99, "books", true, 50)
    );

    let missing = c
        .get_product(GetProductRequest {
            product_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let found = c
        .search_products(SearchProductsRequest {
            category: "sports".into(),
            max_price: Some(30.0),
            sort: "price".into(),
            limit: 3,
            page: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((found.page, found.limit), (2, 3));
    assert!(found.total_count >= 4, "{found:?}");
    assert_eq!(found.total_pages, (found.total_count + 2) / 3);
    assert!(
        found
            .products
            .iter()
            .all(|p| p.category == "sports" && p.price <= 30.0)
    );
    let prices: Vec<f64> = found.products.iter().map(|p| p.price).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");

    let text = c
        .search_products(SearchProductsRequest {
            query: "rust".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text.total_count, 2);
    // REST and gRPC share one port.
    assert_eq!(
        http()
            .get(svc.url("/api/v1/products/prod_012"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn rejects_bad_searches(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut c = client(&svc);
    for (request, field) in [
        (
            SearchProductsRequest {
                limit: 1000,
                ..Default::default()
            },
            "limit",
        ),
        (
            SearchProductsRequest {
                page: -1,
                ..Default::default()
            },
            "page",
        ),
        (
            SearchProductsRequest {
                min_price: Some(-5.0),
                ..Default::default()
            },
            "min_price",
        ),
        (
            SearchProductsRequest {
                sort: "random".into(),
                ..Default::default()
            },
            "sort",
        ),
    ] {
        let status = c.search_products(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{}",
            status.message()
        );
    }
}

async fn price_updates_stream_within_a_second(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut c = client(&svc);
    let mut stream = c
        .watch_product_price(GetProductRequest {
            product_id: "prod_021".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (
            current.product_id.as_str(),
            current.new_price,
            current.version
        ),
        ("prod_021", 29.99, 1)
    );

    // Another product's change and a stock change are not price updates of this one.
    let put = |path: &str, body: serde_json::Value| send(http().put(svc.url(path)).json(&body));
    assert_eq!(
        put(
            "/api/v1/products/prod_022/price",
            json!({"price": 1.0, "version": 1})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put(
            "/api/v1/products/prod_021/inventory",
            json!({"stock": 3, "version": 1})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put(
            "/api/v1/products/prod_021/price",
            json!({"price": 24.5, "version": 2})
        )
        .await
        .0,
        200
    );
    let update = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("a price update within 1 s of the PUT")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            update.product_id.as_str(),
            update.new_price,
            update.currency.as_str(),
            update.version
        ),
        ("prod_021", 24.5, "USD", 3)
    );
    assert!(update.timestamp.ends_with('Z'));

    assert_eq!(
        put(
            "/api/v1/products/prod_021/price",
            json!({"price": 19.0, "version": 3})
        )
        .await
        .0,
        200
    );
    let next = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.new_price, 19.0);

    let unknown = c
        .watch_product_price(GetProductRequest {
            product_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn streams_end_at_shutdown(db: TestDb) {
    let svc = common::start(&db, None).await;
    let mut c = client(&svc);
    let mut stream = c
        .watch_product_price(GetProductRequest {
            product_id: "prod_030".into(),
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let stopping = tokio::spawn(svc.stop());
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    assert!(
        matches!(end, Err(ref s) if s.code() == Code::Unavailable) || matches!(end, Ok(None)),
        "{end:?}"
    );
    stopping.await.unwrap().unwrap();
}
