//! Every query of the operator dashboard, evaluated by Debian's Prometheus
//! scraping a real operator's `/metrics`. The operator runs against the test
//! control plane as its ServiceAccount (operator/rbac.yaml) and is kept busy:
//! MeshServices reconciled, one that the API server refuses (a negative CPU
//! request: reconcile errors and requeues), and ResiliencePolicies admitted
//! through its validating webhook, which the API server calls on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::parse::from_yaml;
use trellis_e2e::delivery::Dashboard;
use trellis_e2e::local::free_port;
use trellis_e2e::prometheus::{self, Prometheus, Target};
use trellis_e2e::{
    ControlPlane, eventually, install_crds, operator_client, operator_service_account,
    test_namespace,
};
use trellis_operator::{CertConfig, Operator, OperatorConfig, WebhookConfig};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_panel_query_returns_series_from_a_real_operator() {
    let Some(cp) = ControlPlane::attach("every_operator_panel_query") else {
        return;
    };
    let Some(prometheus_bin) = prometheus::binary() else {
        return;
    };
    let admin = cp.client().await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = test_namespace(&admin, "dashboard").await.unwrap();
    let (operator_ns, _) = operator_service_account().unwrap();

    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = OperatorConfig {
        namespace: Some(ns.clone()),
        ops_addr: Some(ops),
        webhook: Some(WebhookConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            certs: CertConfig {
                secret_name: format!("trellis-webhook-ca-{ns}"),
                secret_namespace: operator_ns.clone(),
                hosts: vec!["127.0.0.1".into()],
                mutating_webhook: None,
                validating_webhook: None,
                ca_validity: Duration::from_secs(3600 * 24),
                cert_validity: Duration::from_secs(3600),
                check_interval: Duration::from_secs(60),
            },
        }),
        ..OperatorConfig::default()
    };
    let op = Operator::start(operator_client(&cp).await.unwrap(), config)
        .await
        .unwrap();
    let webhook = op.webhook_addr().unwrap();
    let bundle = eventually(WAIT, || async { op.ca_bundle().filter(|b| !b.is_empty()) })
        .await
        .unwrap();

    let dir =
        std::env::temp_dir().join(format!("trellis-operator-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = Target {
        addr: ops,
        labels: BTreeMap::from([("namespace", operator_ns.clone())]),
    };
    let prom = Prometheus::start(&prometheus_bin, &[target], &dir)
        .await
        .unwrap();

    // The API server calls the operator's validating webhook for this namespace only.
    use base64::Engine as _;
    let hook_name = format!("trellis-dashboard-{ns}");
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let hook: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": hook_name},
        "webhooks": [{
            "name": "validate.mesh.trellis.dev",
            "clientConfig": {
                "url": format!("https://{webhook}/validate"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&bundle),
            },
            "rules": [{"apiGroups": ["mesh.trellis.dev"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["resiliencepolicies"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap();
    hooks.create(&PostParams::default(), &hook).await.unwrap();

    let services: Api<MeshService> = Api::namespaced(admin.clone(), &ns);
    let policies: Api<ResiliencePolicy> = Api::namespaced(admin.clone(), &ns);
    for (name, extra) in [
        ("orders", ""),
        ("payments", ""),
        // The Deployment this renders is refused by the API server (422).
        ("broken", ", resources: {requests: {cpu: \"-1\"}}"),
    ] {
        let svc: MeshService = from_yaml(&format!(
            "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}}}\n\
             spec: {{image: trellis/{name}:dev, port: 8080, replicas: 2, upstreams: [payments]{extra}}}\n"
        ))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    // Admitted by the webhook (retried: the API server may take a moment to use the new configuration).
    let policy: ResiliencePolicy = from_yaml(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: payments}\n\
         spec: {targetRef: {kind: MeshService, name: payments}, retry: {attempts: 2}}\n",
    )
    .unwrap();
    eventually(WAIT, || async {
        policies.create(&PostParams::default(), &policy).await.ok()
    })
    .await
    .unwrap();

    // Wait until Prometheus has the error and the webhook series, then two more scrapes.
    let deadline = Instant::now() + WAIT;
    for expr in [
        "sum(trellis_operator_reconcile_errors_total)",
        "sum(trellis_operator_webhook_requests_total)",
        "sum(trellis_operator_writes_total)",
    ] {
        while prom.scalar(expr).await.unwrap() == 0.0 {
            assert!(Instant::now() < deadline, "{expr} stayed 0");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dashboard = Dashboard::all()
        .unwrap()
        .into_iter()
        .find(|d| d.file == "operator.json")
        .unwrap();
    let evaluated = prom.evaluate(&dashboard).await.unwrap();
    let mut empty = Vec::new();
    for e in &evaluated {
        println!("{:>4}  operator.json / {}", e.count, e.what);
        if e.count == 0 {
            empty.push(format!("{}: {}", e.what, e.expr));
        }
    }
    assert!(evaluated.len() >= 10, "only {} queries", evaluated.len());
    hooks
        .delete(&hook_name, &DeleteParams::default())
        .await
        .unwrap();
    op.shutdown().await;
    assert!(
        empty.is_empty(),
        "queries without a series:\n{}",
        empty.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
