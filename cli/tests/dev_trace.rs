//! One order through `trellis dev`'s gateway is one trace in a real Jaeger
//! (run on loopback as the OTLP receiver, read back through its query API):
//! spans from every service's app and its `trellis-proxy`, each synchronous
//! call through both sidecars, and the notifications service reached over
//! RabbitMQ.

mod common;

use std::time::Duration;

use common::{Dev, SHOP, build, shop_files, shopper, traced_order};
use trellis_e2e::jaeger::{LocalJaeger, Trace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_the_shop_and_its_sidecars() {
    build(&SHOP);
    let dir = tempfile::Builder::new()
        .prefix("trellis-dev-trace-")
        .tempdir()
        .expect("a temporary directory");
    let jaeger = LocalJaeger::start(dir.path()).await.expect("Jaeger runs");
    let mut dev = Dev::start(
        &shop_files(),
        &["--otlp-endpoint", jaeger.otlp_endpoint.as_str()],
    );
    assert!(dev.printed("all 6 services ready"), "not all ready");
    assert!(
        dev.printed("RabbitMQ started") || dev.printed("RabbitMQ already running"),
        "the trace crosses RabbitMQ: install rabbitmq-server"
    );
    let token = shopper(&dev).await;

    let (status, trace_id, placed) = traced_order(&dev, &token, 0).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(trace_id.len(), 32, "no x-trace-id from the gateway");

    let trace = Trace::wait_for(
        &jaeger.query,
        &trace_id,
        Duration::from_secs(60),
        Trace::shop_order_problems,
    )
    .await
    .expect("the order's trace in Jaeger");
    println!("trace {trace_id}:\n{}", trace.tree());
    assert!(dev.interrupt(), "trellis dev did not exit cleanly");
}
