//! Outbound routing by authority: Host variants, ports, absolute-form URIs
//! (HTTP_PROXY style), unknown hosts, upstreams without endpoints.

use std::time::Duration;

use http::Version;
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[tokio::test]
async fn routes_every_host_variant_with_or_without_port() {
    let orders = start_app("orders", Duration::ZERO).await;
    let users = start_app("users", Duration::ZERO).await;
    let ups = format!(
        "{}{}",
        upstream(
            "orders",
            &[
                "orders",
                "orders.shop",
                "orders.shop.svc",
                "orders.shop.svc.cluster.local"
            ],
            &[orders.addr]
        ),
        upstream("users", &["users", "users.shop"], &[users.addr]),
    );
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    let c = h1_client();
    for (host, want) in [
        ("orders", "orders"),
        ("orders:80", "orders"),
        ("ORDERS.shop", "orders"),
        ("orders.shop.svc:8080", "orders"),
        ("orders.shop.svc.cluster.local", "orders"),
        ("orders.shop.svc.cluster.local.:80", "orders"),
        ("users", "users"),
        ("users.shop:9000", "users"),
    ] {
        let (status, headers, _) = send(
            &c,
            proxy.outbound_addr,
            host,
            "GET",
            "/",
            body(""),
            Version::HTTP_11,
        )
        .await;
        assert_eq!(status, 200, "{host}");
        assert_eq!(headers["x-app"], want, "{host}");
    }
}

#[tokio::test]
async fn routes_absolute_form_like_an_http_proxy() {
    let orders = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders", "orders.shop"], &[orders.addr]);
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    // As curl sends it with HTTP_PROXY set: absolute URI, Host matching it.
    let (out, _) = raw(
        proxy.outbound_addr,
        b"GET http://orders.shop:8080/echo HTTP/1.1\r\nHost: orders.shop:8080\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\"uri\":\"/echo\""),
        "origin-form upstream: {out}"
    );
    // The URI's authority wins over a different Host header, and replaces it.
    let (out, _) = raw(
        proxy.outbound_addr,
        b"GET http://orders/echo HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"host\":\"orders\""), "{out}");
}

#[tokio::test]
async fn unknown_host_is_404_unknown_upstream() {
    let orders = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[orders.addr]);
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    let (status, headers, _) = send(
        &h1_client(),
        proxy.outbound_addr,
        "payments",
        "GET",
        "/",
        body(""),
        Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-trellis-error"], "unknown-upstream");
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(
        metrics.contains(r#"trellis_requests_total{direction="outbound",outcome="unknown-upstream",peer="unknown",status_class="4xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_endpoints_is_a_fast_503() {
    let orders = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[]);
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    let (status, headers, _) = send(
        &h1_client(),
        proxy.outbound_addr,
        "orders",
        "GET",
        "/",
        body(""),
        Version::HTTP_11,
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-trellis-error"], "no-endpoints");
}

#[tokio::test]
async fn connect_failure_is_502() {
    let orders = start_app("orders", Duration::ZERO).await;
    // A port nobody listens on.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let ups = upstream("orders", &["orders"], &[dead]);
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-trellis-error: connect-failure"),
        "{out}"
    );
}
