//! The broker connection and request-reply against the real RabbitMQ.

use std::time::Duration;

use serde_json::{Value, json};
use shop_common::Problem;
use shop_common::amqp::rpc::{self, Reply, RpcClient, RpcError};
use shop_common::amqp::{Broker, BrokerCheck};
use shop_common::health::Check;
use tokio_util::sync::CancellationToken;

async fn broker(name: &str) -> Option<(Broker, CancellationToken)> {
    let url = shop_testkit::amqp_url()?;
    let shutdown = CancellationToken::new();
    let broker = Broker::start(&url, name, shutdown.clone());
    assert!(
        broker.connection(Duration::from_secs(10)).await.is_some(),
        "no broker connection"
    );
    Some((broker, shutdown))
}

fn unique_queue(prefix: &str) -> &'static str {
    Box::leak(format!("{prefix}.{}", uuid::Uuid::new_v4().simple()).into_boxed_str())
}

#[tokio::test]
async fn request_reply_round_trip() {
    let Some((broker, shutdown)) = broker("rpc-test").await else {
        return;
    };
    assert!(BrokerCheck(broker.clone()).check().await.is_ok());
    let queue = unique_queue("test_requests");
    rpc::serve(&broker, queue, 4, |body| async move {
        let request: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return Reply::Err(Problem::field("body", e.to_string())),
        };
        match request["n"].as_i64() {
            Some(n) => Reply::Ok(json!({"double": n * 2})),
            None => Reply::Err(Problem::not_found("number", "none")),
        }
    })
    .await
    .unwrap();
    let client = RpcClient::new(&broker).await.unwrap();

    // Concurrent calls each get their own answer (correlation ids).
    let calls = (0..20).map(|n| {
        let client = client.clone();
        async move {
            let reply: Value = client
                .call(queue, &json!({"n": n}), Duration::from_secs(5))
                .await
                .unwrap();
            (n, reply["double"].as_i64().unwrap())
        }
    });
    for (n, double) in futures::future::join_all(calls).await {
        assert_eq!(double, n * 2);
    }

    // A failure comes back as the server's problem, not as a timeout.
    let err = client
        .call::<_, Value>(queue, &json!({"n": "x"}), Duration::from_secs(5))
        .await
        .unwrap_err();
    match err {
        RpcError::Remote(p) => assert_eq!(p.status.as_u16(), 404),
        other => panic!("expected the server's problem, got {other}"),
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_queue_nobody_serves_fails_fast() {
    let Some((broker, shutdown)) = broker("rpc-test-noserver").await else {
        return;
    };
    let client = RpcClient::new(&broker).await.unwrap();
    let err = client
        .call::<_, Value>(
            unique_queue("nobody_home"),
            &json!({}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NoServer { .. }), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_slow_server_times_out_on_the_client_side() {
    let Some((broker, shutdown)) = broker("rpc-test-slow").await else {
        return;
    };
    let queue = unique_queue("slow_requests");
    rpc::serve(&broker, queue, 1, |_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Reply::Ok(json!("late"))
    })
    .await
    .unwrap();
    let client = RpcClient::new(&broker).await.unwrap();
    let err = client
        .call::<_, Value>(queue, &json!({}), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn no_broker_means_not_ready() {
    let addr = shop_testkit::closed_port().await;
    let shutdown = CancellationToken::new();
    let broker = Broker::start(
        &format!("amqp://guest:guest@{addr}/%2f"),
        "absent",
        shutdown.clone(),
    );
    assert!(
        broker
            .connection(Duration::from_millis(300))
            .await
            .is_none()
    );
    let reason = BrokerCheck(broker.clone()).check().await.unwrap_err();
    assert_eq!(reason, "not connected");
    let client = RpcClient::new(&broker).await.unwrap();
    let err = client
        .call::<_, Value>("q", &json!({}), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NotConnected), "{err}");
    shutdown.cancel();
}

#[tokio::test]
async fn reconnects_and_sets_up_again_when_the_connection_drops() {
    let name = format!("reconnect-{}", uuid::Uuid::new_v4().simple());
    let Some((broker, shutdown)) = broker(&name).await else {
        return;
    };
    if shop_testkit::testenv_var("SHOP_TESTENV_DIR").is_none() {
        return;
    }
    let setups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = setups.clone();
    broker
        .on_connect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        })
        .await
        .unwrap();
    let queue = unique_queue("again");
    rpc::serve(&broker, queue, 1, |_| async { Reply::Ok(json!("pong")) })
        .await
        .unwrap();
    let client = RpcClient::new(&broker).await.unwrap();
    let empty = json!({});
    let ping = || client.call::<_, Value>(queue, &empty, Duration::from_secs(2));
    assert_eq!(ping().await.unwrap(), "pong");

    let closed = tokio::task::spawn_blocking(move || shop_testkit::close_broker_connections(&name))
        .await
        .unwrap();
    assert_eq!(closed, 1);
    // The supervisor notices, reconnects and runs every setup again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while setups.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(broker.connection(Duration::from_secs(5)).await.is_some());
    assert!(BrokerCheck(broker.clone()).check().await.is_ok());
    assert_eq!(
        ping().await.unwrap(),
        "pong",
        "request-reply works again on the new connection"
    );
    shutdown.cancel();
}
