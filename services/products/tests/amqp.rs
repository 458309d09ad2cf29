//! products over the real broker, on SQLite and on Postgres: request-reply
//! on `product_requests`, and price changes reaching watchers of another
//! replica.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use shop_common::amqp::Broker;
use shop_common::amqp::rpc::{RpcClient, RpcError};
use shop_common::config::ProxySettings;
use shop_proto::product::v1::GetProductRequest;
use shop_proto::product::v1::product_service_client::ProductServiceClient;
use shop_testkit::{TestDb, db_tests, get_json, http};
use tokio_util::sync::CancellationToken;

db_tests!(answers_product_requests, price_changes_reach_every_replica);

async fn answers_product_requests(db: TestDb) {
    let Some(amqp) = shop_testkit::amqp_url() else {
        return;
    };
    let svc = common::start(&db, Some(amqp.clone())).await;
    let ready: Value = get_json(&svc.url("/health/ready")).await;
    assert_eq!(ready["checks"]["broker"]["status"], "UP");

    let shutdown = CancellationToken::new();
    let broker = Broker::start(&amqp, "products-test-client", shutdown.clone());
    let client = RpcClient::new(&broker).await.unwrap();
    let timeout = Duration::from_secs(5);

    let product: Value = client
        .call(
            "product_requests",
            &json!({"productId": "prod_031"}),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(product["id"], "prod_031");
    assert_eq!(product["name"], "Merino T-Shirt");
    assert_eq!(product["stock"], 100);

    let missing = client
        .call::<_, Value>(
            "product_requests",
            &json!({"productId": "prod_999"}),
            timeout,
        )
        .await
        .unwrap_err();
    let RpcError::Remote(problem) = missing else {
        panic!("expected a problem, got {missing}")
    };
    assert_eq!(problem.status.as_u16(), 404);

    let malformed = client
        .call::<_, Value>("product_requests", &json!({"id": "prod_031"}), timeout)
        .await
        .unwrap_err();
    let RpcError::Remote(problem) = malformed else {
        panic!("expected a problem, got {malformed}")
    };
    assert_eq!(problem.status.as_u16(), 400);
    assert_eq!(problem.errors[0].field, "id");
    shutdown.cancel();
}

async fn price_changes_reach_every_replica(db: TestDb) {
    let Some(amqp) = shop_testkit::amqp_url() else {
        return;
    };
    // Two replicas on one database; the watcher is on one, the change made on the other.
    let a = common::start(&db, Some(amqp.clone())).await;
    let b = common::start(&db, Some(amqp)).await;
    let channel = shop_common::grpc::channel(&b.url(""), &ProxySettings::default()).unwrap();
    let mut stream = ProductServiceClient::new(channel)
        .watch_product_price(GetProductRequest {
            product_id: "prod_041".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = stream.message().await.unwrap().unwrap();
    let r = http()
        .put(a.url("/api/v1/products/prod_041/price"))
        .json(&json!({"price": 30.0, "version": current.version}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let update = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("the other replica's watcher hears of it within 1 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (update.product_id.as_str(), update.new_price),
        ("prod_041", 30.0)
    );
}
