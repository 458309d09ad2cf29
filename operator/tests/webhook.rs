//! Webhook handler tests with real AdmissionReview JSON, the HTTPS server, and
//! the certificate manager against the in-memory API.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::FakeApi;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use trellis_api::inject::{ProxySettings, is_injected};
use trellis_operator::certs::{CertConfig, CertManager, CertStore, generate_ca, issue_leaf};
use trellis_operator::metrics::Metrics;
use trellis_operator::webhook::{self, Outcome, Webhook, WebhookState};
use trellis_operator::{Operator, OperatorConfig, WebhookConfig};

fn pod(annotations: Value, init: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {"initContainers": init, "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}]}
    })
}

fn review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": object["kind"]},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": object["kind"]},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn state(client: Option<kube::Client>) -> WebhookState {
    WebhookState {
        client,
        proxy: ProxySettings::default(),
        metrics: Metrics::new(),
    }
}

fn response(review: &Value) -> &Value {
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review:#}");
    assert_eq!(review["kind"], "AdmissionReview");
    &review["response"]
}

fn patch_of(resp: &Value) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = serde_json::from_value(resp.get("patch")?.clone()).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn annotated_pod_is_injected_with_a_json_patch() {
    let original = pod(json!({"mesh.trellis.dev/inject": "enabled"}), json!(null));
    let (review, outcome) = webhook::review_inject(&state(None), &review(original.clone())).await;
    assert_eq!(outcome, Outcome::Injected);
    let resp = response(&review);
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = patch_of(resp).expect("a patch");
    assert!(patch.0.iter().all(|op| {
        let v = serde_json::to_value(op).unwrap();
        v["path"].as_str().unwrap().starts_with("/spec")
    }));
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch.0).unwrap();
    let pod: Pod = serde_json::from_value(patched).unwrap();
    let spec = pod.spec.unwrap();
    assert!(is_injected(&spec));
    assert_eq!(spec.containers[0].name, "app");
}

#[tokio::test]
async fn a_pod_naming_its_mesh_service_mounts_that_services_config() {
    let config_map = |annotations: Value| {
        let original = pod(annotations, json!(null));
        async move {
            let (review, _) = webhook::review_inject(&state(None), &review(original.clone())).await;
            let mut patched = original;
            json_patch::patch(
                &mut patched,
                &patch_of(response(&review)).expect("a patch").0,
            )
            .unwrap();
            let pod: Pod = serde_json::from_value(patched).unwrap();
            let volumes = pod.spec.unwrap().volumes.unwrap();
            volumes
                .iter()
                .find_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
                .unwrap()
        }
    };
    let named = json!({"mesh.trellis.dev/inject": "enabled", "mesh.trellis.dev/service": "orders"});
    assert_eq!(config_map(named).await, "orders-proxy");
    let unnamed = json!({"mesh.trellis.dev/inject": "enabled"});
    assert_eq!(
        config_map(unnamed).await,
        ProxySettings::default().config_map
    );
}

#[tokio::test]
async fn pods_without_the_annotation_or_disabled_are_skipped() {
    for annotations in [
        json!(null),
        json!({"mesh.trellis.dev/inject": "disabled"}),
        json!({"other": "x"}),
    ] {
        let (review, outcome) =
            webhook::review_inject(&state(None), &review(pod(annotations.clone(), json!(null))))
                .await;
        assert_eq!(outcome, Outcome::Skipped, "{annotations}");
        let resp = response(&review);
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none(), "{resp:#}");
    }
}

#[tokio::test]
async fn namespace_label_enables_injection_and_the_annotation_can_opt_out() {
    let (client, fake) = FakeApi::new();
    fake.insert(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "labels": {"mesh.trellis.dev/inject": "enabled"}}}),
    );
    let st = state(Some(client));
    let (review_, outcome) =
        webhook::review_inject(&st, &review(pod(json!(null), json!(null)))).await;
    assert_eq!(outcome, Outcome::Injected);
    assert!(patch_of(response(&review_)).is_some());
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == Method::GET && r.path == "/api/v1/namespaces/shop")
    );

    let (review_, outcome) = webhook::review_inject(
        &st,
        &review(pod(
            json!({"mesh.trellis.dev/inject": "disabled"}),
            json!(null),
        )),
    )
    .await;
    assert_eq!(outcome, Outcome::Skipped);
    assert!(response(&review_).get("patch").is_none());
}

#[tokio::test]
async fn namespace_lookup_failure_admits_the_pod_with_a_warning() {
    let (client, fake) = FakeApi::new();
    fake.fail_next(Method::GET, "/api/v1/namespaces/shop", 500, "InternalError");
    let st = state(Some(client));
    let (review_, outcome) =
        webhook::review_inject(&st, &review(pod(json!(null), json!(null)))).await;
    assert_eq!(outcome, Outcome::Error);
    let resp = response(&review_);
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("sidecar not injected")
    );
}

#[tokio::test]
async fn already_injected_pod_gets_no_patch() {
    let first = pod(json!({"mesh.trellis.dev/inject": "enabled"}), json!(null));
    let (review_, _) = webhook::review_inject(&state(None), &review(first.clone())).await;
    let mut injected = first;
    json_patch::patch(&mut injected, &patch_of(response(&review_)).unwrap().0).unwrap();

    let (review_, outcome) = webhook::review_inject(&state(None), &review(injected)).await;
    assert_eq!(outcome, Outcome::AlreadyInjected);
    let resp = response(&review_);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test]
async fn malformed_reviews_are_allowed_with_a_message() {
    let st = state(None);
    let cases: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"{}".to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc","object":42}}"#.to_vec(),
        vec![0xff, 0xfe, 0x00],
    ];
    for body in cases {
        let (review_, outcome) = webhook::review_inject(&st, &body).await;
        assert_eq!(
            outcome,
            Outcome::Malformed,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let resp = response(&review_);
        assert_eq!(resp["allowed"], true);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .contains("could not read"),
            "{resp:#}"
        );
        let (review_, outcome) = webhook::review_validate(&body);
        assert_eq!(outcome, Outcome::Malformed);
        assert_eq!(response(&review_)["allowed"], true);
    }
    // The uid is echoed when it can be found.
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc","object":42}}"#;
    let (review_, _) = webhook::review_inject(&st, body).await;
    assert_eq!(response(&review_)["uid"], "abc");
}

#[tokio::test]
async fn inject_conflicts_never_block_the_pod() {
    let bad = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"mesh.trellis.dev/inject": "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 4143}]}]}
    });
    let (review_, outcome) = webhook::review_inject(&state(None), &review(bad)).await;
    assert_eq!(outcome, Outcome::Error);
    let resp = response(&review_);
    assert_eq!(resp["allowed"], true);
    assert!(
        resp["warnings"][0].as_str().unwrap().contains("4143"),
        "{resp:#}"
    );
}

fn policy_review(routes: Value) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&review(json!({
        "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "ResiliencePolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"targetRef": {"kind": "MeshService", "name": "payments"}, "routes": routes}
    })))
    .unwrap();
    body["request"]["kind"] =
        json!({"group": "mesh.trellis.dev", "version": "v1alpha1", "kind": "ResiliencePolicy"});
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn validate_allows_good_policies_and_denies_shadowed_routes() {
    let good = policy_review(json!([
        {"match": {"pathPrefix": "/api/v1/payments", "methods": ["POST"]}, "retry": {"attempts": 1}},
        {"match": {"pathPrefix": "/api"}, "timeout": {"request": "1s"}}
    ]));
    let (review_, outcome) = webhook::review_validate(&good);
    assert_eq!(outcome, Outcome::Allowed);
    assert_eq!(response(&review_)["allowed"], true);

    let shadowed = policy_review(json!([
        {"match": {"pathPrefix": "/api", "methods": ["GET", "POST"]}, "retry": {"attempts": 1}},
        {"match": {"pathPrefix": "/api", "methods": ["POST"]}, "retry": {"attempts": 2}}
    ]));
    let (review_, outcome) = webhook::review_validate(&shadowed);
    assert_eq!(outcome, Outcome::Denied);
    let resp = response(&review_);
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 422);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("routes[1]"),
        "{resp:#}"
    );

    let contradictory = policy_review(json!([{"match": {"pathPrefix": "/a", "path": "/b"}}]));
    let (review_, outcome) = webhook::review_validate(&contradictory);
    assert_eq!(outcome, Outcome::Denied);
    assert!(
        response(&review_)["status"]["message"]
            .as_str()
            .unwrap()
            .contains("never match")
    );
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca_pem.as_bytes(),
        )
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// POSTs `body` to `https://addr{path}` trusting `ca_pem`; returns the peer certificate and JSON.
async fn https_post(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(Vec<u8>, Value), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok((peer, serde_json::from_slice(&bytes).unwrap()))
}

#[tokio::test]
async fn https_server_serves_reviews_and_hot_swaps_its_certificate() {
    let hosts = vec!["127.0.0.1".to_string()];
    let ca = generate_ca(Duration::from_secs(3600)).unwrap();
    let store = CertStore::new();
    store
        .install(
            &ca,
            ca.cert_pem.clone(),
            &issue_leaf(&ca, &hosts, Duration::from_secs(600)).unwrap(),
        )
        .unwrap();
    let st = Arc::new(state(None));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = Webhook::serve(
        "127.0.0.1:0".parse().unwrap(),
        st.clone(),
        store.clone(),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();

    let body = review(pod(
        json!({"mesh.trellis.dev/inject": "enabled"}),
        json!(null),
    ));
    let (first_peer, reply) = https_post(addr, &ca.cert_pem, "/inject", body.clone())
        .await
        .unwrap();
    assert_eq!(reply["response"]["allowed"], true);
    assert!(reply["response"]["patch"].is_array());
    assert!(st.metrics.render().contains(
        "trellis_operator_webhook_requests_total{outcome=\"injected\",webhook=\"inject\"} 1"
    ));

    // A new CA and leaf: new handshakes get them, without restarting the server.
    let ca2 = generate_ca(Duration::from_secs(3600)).unwrap();
    store
        .install(
            &ca2,
            ca2.cert_pem.clone(),
            &issue_leaf(&ca2, &hosts, Duration::from_secs(600)).unwrap(),
        )
        .unwrap();
    let (second_peer, _) = https_post(addr, &ca2.cert_pem, "/inject", body.clone())
        .await
        .unwrap();
    assert_ne!(first_peer, second_peer);
    assert!(
        https_post(addr, &ca.cert_pem, "/inject", body)
            .await
            .is_err(),
        "old CA must no longer verify"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap();
}

fn mutating_config() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "trellis-injector"},
        "webhooks": [{"name": "inject.mesh.trellis.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "clientConfig": {"service": {"name": "trellis-operator-webhook", "namespace": "trellis-system", "path": "/inject"}}}]
    })
}

fn cert_config(cert_validity: Duration, ca_validity: Duration) -> CertConfig {
    CertConfig {
        secret_name: "trellis-operator-webhook-ca".into(),
        secret_namespace: "trellis-system".into(),
        hosts: vec![
            "trellis-operator-webhook.trellis-system.svc".into(),
            "127.0.0.1".into(),
        ],
        mutating_webhook: Some("trellis-injector".into()),
        validating_webhook: Some("trellis-validator".into()),
        ca_validity,
        cert_validity,
        check_interval: Duration::from_millis(200),
    }
}

const SECRET: &str = "/api/v1/namespaces/trellis-system/secrets/trellis-operator-webhook-ca";
const MWC: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/trellis-injector";

fn ca_bundle_in(fake: &FakeApi) -> String {
    let b = fake.get(MWC).unwrap()["webhooks"][0]["clientConfig"]["caBundle"].clone();
    let bytes: k8s_openapi::ByteString = serde_json::from_value(b).unwrap();
    String::from_utf8(bytes.0).unwrap()
}

#[tokio::test]
async fn cert_manager_creates_the_ca_once_and_writes_ca_bundles() {
    let (client, fake) = FakeApi::new();
    fake.insert(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        mutating_config(),
    );
    let config = cert_config(Duration::from_secs(3600), Duration::from_secs(7200));

    let a = CertManager::new(
        client.clone(),
        config.clone(),
        CertStore::new(),
        Metrics::new(),
    );
    a.ensure().await.unwrap();
    assert!(a.store().is_loaded());
    let secret = fake.get(SECRET).expect("CA secret created");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(ca_bundle_in(&fake), a.store().ca_bundle());

    // A second replica reuses the CA; nothing to write.
    fake.clear_requests();
    let b = CertManager::new(client, config, CertStore::new(), Metrics::new());
    b.ensure().await.unwrap();
    assert_eq!(b.store().ca_bundle(), a.store().ca_bundle());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_ne!(
        b.store().leaf_pem(),
        a.store().leaf_pem(),
        "each replica signs its own leaf"
    );

    // Someone reset the bundle (e.g. a Helm upgrade): the next pass restores it.
    fake.update(MWC, |c| {
        c["webhooks"][0]["clientConfig"]["caBundle"] = json!(null)
    });
    b.ensure().await.unwrap();
    assert_eq!(ca_bundle_in(&fake), a.store().ca_bundle());
}

#[tokio::test]
async fn cert_manager_rotates_leaf_and_ca_before_expiry() {
    let (client, fake) = FakeApi::new();
    fake.insert(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        mutating_config(),
    );
    // Leaf renewed 1s before its 3s life ends; CA renewed 3s before its 6s life ends.
    let config = cert_config(Duration::from_secs(3), Duration::from_secs(6));
    let metrics = Metrics::new();
    let manager = CertManager::new(client, config, CertStore::new(), metrics.clone());
    let store = manager.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(manager.run(async move {
        let _ = stopped.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(12);
    let mut first_leaf = None;
    loop {
        if first_leaf.is_none() {
            first_leaf = store.leaf_pem();
        }
        let rotated_ca = fake
            .get(SECRET)
            .is_some_and(|s| s["data"].get("ca-previous.crt").is_some());
        if rotated_ca && metrics.cert_rotations.get() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation; rotations {}",
            metrics.cert_rotations.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(store.leaf_pem(), first_leaf);
    // During a CA change the bundle carries old and new.
    let bundle = ca_bundle_in(&fake);
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert_eq!(bundle, store.ca_bundle());
    let _ = stop.send(());
    task.await.unwrap();
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

#[tokio::test]
async fn operator_start_serves_webhooks_metrics_and_health_then_shuts_down() {
    let (client, fake) = FakeApi::new();
    fake.insert(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        mutating_config(),
    );
    let config = OperatorConfig {
        webhook: Some(WebhookConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            certs: cert_config(Duration::from_secs(3600), Duration::from_secs(7200)),
        }),
        ops_addr: Some("127.0.0.1:0".parse().unwrap()),
        identity: "test-1".into(),
        ..OperatorConfig::default()
    };
    let operator = Operator::start(client, config).await.unwrap();
    assert!(operator.is_leader(), "no election: always the leader");
    let ops = operator.ops_addr().unwrap();
    assert_eq!(http_get(ops, "/healthz").await.0, 200);
    assert_eq!(http_get(ops, "/readyz").await.0, 200);

    let ca = operator.ca_bundle().unwrap();
    let body = review(pod(
        json!({"mesh.trellis.dev/inject": "enabled"}),
        json!(null),
    ));
    let (_, reply) = https_post(operator.webhook_addr().unwrap(), &ca, "/inject", body)
        .await
        .unwrap();
    assert_eq!(reply["response"]["allowed"], true);

    let (code, metrics) = http_get(ops, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "trellis_operator_webhook_requests_total{outcome=\"injected\",webhook=\"inject\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("trellis_operator_leader 1"), "{metrics}");

    let started = Instant::now();
    operator.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
}
