//! `kubernetes` discovery against a real API server. Runs when
//! `TRELLIS_TEST_KUBECONFIG` names a kubeconfig (e2e/control-plane.sh prints
//! one, scripts/test.sh sets it); otherwise it says it skipped — except under
//! CI, where a missing API server is a failure.

use std::time::Duration;

use http::Version;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::support::*;

async fn client() -> Option<kube::Client> {
    let Ok(path) = std::env::var("TRELLIS_TEST_KUBECONFIG") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the kubernetes discovery test against a real API server: TRELLIS_TEST_KUBECONFIG is not set"
        );
        eprintln!("skipped: set TRELLIS_TEST_KUBECONFIG to run the kubernetes discovery test");
        return None;
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig valid");
    Some(kube::Client::try_from(config).expect("client"))
}

fn slice(name: &str, service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 4143, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| serde_json::json!({
            "addresses": [ip], "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[tokio::test]
async fn kubernetes_discovery_follows_endpoint_slices() {
    let Some(client) = client().await else { return };
    let ns = format!("trellis-proxy-test-{:x}", rand::random::<u32>());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();

    // The API server refuses loopback addresses in slices, and no test may
    // send traffic off loopback: the slices name TEST-NET-1 addresses
    // (RFC 5737), which this test only reads back and never connects to.
    let (a, b) = ("192.0.2.10", "192.0.2.11");
    let port = 4143;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    slices
        .create(
            &PostParams::default(),
            &slice("orders-a", "orders", &[(a, true), (b, false)]),
        )
        .await
        .unwrap();

    let app = start_app("app", Duration::ZERO).await;
    let ups = format!(
        "- name: orders\n  authorities: [orders]\n  discovery: !kubernetes {{service: orders, namespace: {ns}, port: {port}}}\n  policy: {{}}\n"
    );
    let proxy = trellis_proxy::Proxy::start_with(
        parse(&config_yaml(app.addr, "http", &ups, "")),
        trellis_proxy::Options {
            kube_client: Some(client.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async { proxy.is_ready() }).await,
        "never ready"
    );
    let endpoints = || async {
        let (_, eps) = admin_get(&proxy, "/endpoints").await;
        let v: serde_json::Value = serde_json::from_str(&eps).unwrap();
        let mut addrs: Vec<String> = v["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap().to_string())
            .collect();
        addrs.sort();
        addrs
    };
    // Only the ready endpoint, on the configured port.
    assert_eq!(endpoints().await, [format!("{a}:{port}")]);

    // b becomes ready, a goes away, a second slice adds one more: the set follows.
    let mut s = slice("orders-a", "orders", &[(b, true)]);
    s.metadata.resource_version = slices
        .get("orders-a")
        .await
        .unwrap()
        .metadata
        .resource_version;
    slices
        .replace("orders-a", &PostParams::default(), &s)
        .await
        .unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice("orders-b", "orders", &[("192.0.2.12", true)]),
        )
        .await
        .unwrap();
    let want = vec![format!("{b}:{port}"), format!("192.0.2.12:{port}")];
    assert!(
        eventually(Duration::from_secs(20), || async {
            endpoints().await == want
        })
        .await,
        "got {:?}",
        endpoints().await
    );
    // Deleting every slice empties the set: a fast 503, nothing dialled.
    slices
        .delete("orders-a", &DeleteParams::default())
        .await
        .unwrap();
    slices
        .delete("orders-b", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            endpoints().await.is_empty()
        })
        .await
    );
    let c = h1_client();
    let (status, headers, _) = send(
        &c,
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
    let (_, m) = admin_get(&proxy, "/metrics").await;
    assert!(
        m.contains(r#"trellis_discovery_stale{peer="orders"} 0"#),
        "{m}"
    );
    proxy.shutdown().await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
