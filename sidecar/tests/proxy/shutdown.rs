//! Graceful shutdown: in-flight requests finish, new connections are refused.

use std::time::Duration;

use http::Version;

use crate::support::*;

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let app = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[app.addr]);
    let proxy = start_proxy(&config_yaml(app.addr, "http", &ups, "")).await;
    let out = proxy.outbound_addr;
    let long = tokio::spawn(async move {
        send(
            &h1_client(),
            out,
            "orders",
            "GET",
            "/slow/2000",
            body(""),
            Version::HTTP_11,
        )
        .await
    });
    // An h2 request in flight on another connection too.
    let long_h2 = tokio::spawn(async move {
        send(
            &h2_client(),
            out,
            "orders",
            "GET",
            "/slow/2000",
            body(""),
            Version::HTTP_2,
        )
        .await
    });
    // Let both requests reach the app.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.hits.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await
    );

    let shutdown = tokio::spawn(proxy.shutdown());
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(out).await.is_err()
        })
        .await,
        "new connections still accepted during shutdown"
    );
    assert!(
        !long.is_finished(),
        "refused only after the in-flight request ended"
    );
    let (status, headers, b) = long.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&b[..], b"slow orders");
    // HTTP/1.1 is told the connection ends.
    assert_eq!(
        headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    assert_eq!(long_h2.await.unwrap().0, 200);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finished")
        .unwrap();
}
