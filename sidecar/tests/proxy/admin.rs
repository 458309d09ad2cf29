//! The admin port.

use std::time::Duration;

use http::Version;

use crate::support::*;

#[tokio::test]
async fn admin_endpoints_report_state() {
    let orders = start_app("orders", Duration::ZERO).await;
    let ups = upstream("orders", &["orders"], &[orders.addr]);
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;

    assert_eq!(admin_get(&proxy, "/live").await.0, 200);
    // Static discovery resolves at once.
    assert_eq!(admin_get(&proxy, "/ready").await.0, 200);

    let (status, cfg) = admin_get(&proxy, "/config").await;
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["upstreams"][0]["name"], "orders");
    assert_eq!(cfg["apiVersion"], "proxy.trellis.dev/v1");

    send(
        &h1_client(),
        proxy.outbound_addr,
        "orders",
        "GET",
        "/",
        body(""),
        Version::HTTP_11,
    )
    .await;
    let (_, eps) = admin_get(&proxy, "/endpoints").await;
    let eps: serde_json::Value = serde_json::from_str(&eps).unwrap();
    let e = &eps["upstreams"][0]["endpoints"][0];
    assert_eq!(e["address"], orders.addr.to_string());
    assert_eq!(e["state"], "ready");
    assert_eq!(e["inFlight"], 0);
    assert!(e["ewmaLatencyMs"].as_f64().unwrap() > 0.0);
    assert_eq!(eps["upstreams"][0]["stale"], false);

    let (_, m) = admin_get(&proxy, "/metrics").await;
    for want in [
        r#"trellis_requests_total{direction="outbound",outcome="success",peer="orders",status_class="2xx"} 1"#,
        r#"trellis_request_duration_seconds_count{direction="outbound",peer="orders"} 1"#,
        r#"trellis_endpoints{peer="orders",state="ready"} 1"#,
        r#"trellis_discovery_stale{peer="orders"} 0"#,
    ] {
        assert!(m.contains(want), "missing {want}\n{m}");
    }
    assert_eq!(admin_get(&proxy, "/nope").await.0, 404);
}

#[tokio::test]
async fn not_ready_until_discovery_answers() {
    let orders = start_app("orders", Duration::ZERO).await;
    // An API server that is not there keeps a `kubernetes` upstream unresolved.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let kube_config = kube::Config::new(format!("http://{dead}").parse().unwrap());
    let client = kube::Client::try_from(kube_config).unwrap();
    let ups = "- name: ghost\n  authorities: [ghost]\n  discovery: !kubernetes {service: ghost, namespace: shop, port: 4143}\n  policy: {}\n";
    let opts = trellis_proxy::Options {
        kube_client: Some(client),
        ..Default::default()
    };
    let proxy =
        trellis_proxy::Proxy::start_with(parse(&config_yaml(orders.addr, "http", ups, "")), opts)
            .await
            .unwrap();
    assert_eq!(admin_get(&proxy, "/ready").await.0, 503);
    assert_eq!(admin_get(&proxy, "/live").await.0, 200);
    // The failing watch marks the upstream stale.
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_get(&proxy, "/metrics")
                .await
                .1
                .contains(r#"trellis_discovery_stale{peer="ghost"} 1"#)
        })
        .await
    );
    let (status, headers, _) = send(
        &h1_client(),
        proxy.outbound_addr,
        "ghost",
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
async fn dns_discovery_resolves_localhost() {
    let orders = start_app("orders", Duration::ZERO).await;
    let ups = format!(
        "- name: orders\n  authorities: [orders]\n  discovery: !dns {{host: \"127.0.0.1\", port: {}, refresh: 1s}}\n  policy: {{}}\n",
        orders.addr.port()
    );
    let proxy = start_proxy(&config_yaml(orders.addr, "http", &ups, "")).await;
    assert!(eventually(Duration::from_secs(5), || async { proxy.is_ready() }).await);
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
    assert_eq!(status, 200);
    assert_eq!(headers["x-app"], "orders");
}
