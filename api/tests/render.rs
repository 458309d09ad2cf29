//! Golden tests of the renderer, compared structurally.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use pretty_assertions::assert_eq;
use serde_json::json;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::inject::{PROXY_CONTAINER, is_injected};
use trellis_api::parse::from_yaml;
use trellis_api::proxy::{Discovery, ProxyConfig};
use trellis_api::render::{
    CONFIG_HASH_ANNOTATION, DiscoveryMode, RenderError, Rendered, Settings, render,
};

fn orders() -> MeshService {
    let mut svc: MeshService = from_yaml(
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: MeshService
metadata: {name: orders, namespace: shop, uid: 0d9c6d0e-0000-4000-8000-000000000001}
spec:
  image: trellis/orders:dev
  replicas: 2
  port: 8083
  upstreams: [users, payments]
  health: {readinessPath: /health/ready}
"#,
    )
    .unwrap();
    svc.metadata.uid = Some("0d9c6d0e-0000-4000-8000-000000000001".into());
    svc
}

fn policy(name: &str, target: &str, body: &str) -> ResiliencePolicy {
    let mut p: ResiliencePolicy = from_yaml(&format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRef: {{kind: MeshService, name: {target}}}\n{body}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    p.metadata.creation_timestamp =
        Some(Time("2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()));
    p
}

fn policies() -> Vec<ResiliencePolicy> {
    vec![
        policy(
            "payments",
            "payments",
            "  retry: {attempts: 3}\n  circuitBreaker: {failureRateThreshold: 50}\n  routes:\n  - match: {methods: [POST]}\n    retry: {attempts: 1}\n",
        ),
        policy(
            "orders-inbound",
            "orders",
            "  inbound: {rateLimit: {requestsPerSecond: 100, burst: 200}}\n",
        ),
    ]
}

fn rendered(policies: &[ResiliencePolicy]) -> Rendered {
    render(&orders(), policies, &Settings::default()).unwrap()
}

fn value<T: serde::Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).unwrap()
}

#[test]
fn service_is_port_80_to_the_sidecar() {
    let r = rendered(&policies());
    let owner = json!([{
        "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "MeshService", "name": "orders",
        "uid": "0d9c6d0e-0000-4000-8000-000000000001", "controller": true
    }]);
    assert_eq!(
        value(&r.service),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "orders", "namespace": "shop",
                "labels": {
                    "app.kubernetes.io/name": "orders",
                    "app.kubernetes.io/part-of": "trellis",
                    "app.kubernetes.io/managed-by": "trellis-operator"
                },
                "ownerReferences": owner
            },
            "spec": {
                "selector": {"mesh.trellis.dev/service": "orders"},
                "ports": [{"name": "http", "port": 80, "targetPort": "trellis-inbound", "appProtocol": "http", "protocol": "TCP"}]
            }
        })
    );
    for meta in [
        &r.deployment.metadata,
        &r.config_map.metadata,
        &r.service_account.metadata,
        &r.role.metadata,
    ] {
        assert_eq!(value(&meta.owner_references), owner);
    }
}

#[test]
fn deployment_runs_the_app_with_the_sidecar() {
    let r = rendered(&policies());
    let spec = r.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        value(&spec.selector),
        json!({"matchLabels": {"mesh.trellis.dev/service": "orders"}})
    );
    let template = &spec.template;
    let annotations = template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], r.restart_hash);
    let pod = template.spec.as_ref().unwrap();
    assert!(is_injected(pod));
    assert_eq!(pod.service_account_name.as_deref(), Some("orders"));
    let app = &pod.containers[0];
    assert_eq!(
        (app.name.as_str(), app.image.as_deref()),
        ("orders", Some("trellis/orders:dev"))
    );
    assert_eq!(
        value(&app.readiness_probe),
        json!({"httpGet": {"path": "/health/ready", "port": 4143}, "periodSeconds": 5})
    );
    let sidecar = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, PROXY_CONTAINER);
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.config_map.is_some())
        .unwrap();
    assert_eq!(volume.config_map.as_ref().unwrap().name, "orders-proxy");
    assert!(r.pdb.is_some(), "two replicas get a PodDisruptionBudget");
    assert_eq!(
        value(&r.role.rules),
        json!([{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}])
    );
}

#[test]
fn config_map_carries_the_resolved_proxy_config() {
    let r = rendered(&policies());
    let text = &r.config_map.data.as_ref().unwrap()["proxy.yaml"];
    let config = ProxyConfig::from_yaml(text).unwrap();
    assert_eq!(config, r.proxy_config);
    assert_eq!(config.identity.service, "orders");
    assert_eq!(config.app.address.to_string(), "127.0.0.1:8083");
    let rl = config.inbound.rate_limit.as_ref().unwrap();
    assert_eq!((rl.requests_per_second.get(), rl.burst.get()), (100, 200));
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["payments", "users"], "sorted");
    let payments = &config.upstreams[0];
    assert_eq!(
        payments.authorities,
        [
            "payments",
            "payments.shop",
            "payments.shop.svc",
            "payments.shop.svc.cluster.local"
        ]
    );
    assert_eq!(
        value(&payments.discovery),
        json!({"kubernetes": {"service": "payments", "namespace": "shop", "port": 4143}})
    );
    assert_eq!(payments.policy.retry.as_ref().unwrap().attempts.get(), 3);
    assert_eq!(
        payments.routes[0]
            .policy
            .retry
            .as_ref()
            .unwrap()
            .attempts
            .get(),
        1
    );
    assert_eq!(payments.sources, ["payments"]);
    let users = &config.upstreams[1];
    assert!(users.policy.retry.is_none() && users.policy.circuit_breaker.is_none());
    assert_eq!(
        r.policies,
        ["orders-inbound"],
        "policies for calls into orders"
    );
}

#[test]
fn config_hash_follows_relevant_policies_only() {
    let base = rendered(&policies()).config_hash;
    assert_eq!(rendered(&policies()).config_hash, base, "deterministic");

    let mut changed = policies();
    changed[0] = policy("payments", "payments", "  retry: {attempts: 4}\n");
    assert_ne!(
        rendered(&changed).config_hash,
        base,
        "a policy on an upstream changes the hash"
    );

    let mut unrelated = policies();
    unrelated.push(policy(
        "notifications",
        "notifications",
        "  retry: {attempts: 2}\n",
    ));
    assert_eq!(
        rendered(&unrelated).config_hash,
        base,
        "a policy on a service orders does not call"
    );

    let mut reordered = policies();
    reordered.reverse();
    assert_eq!(
        rendered(&reordered).config_hash,
        base,
        "order of inputs does not matter"
    );
}

#[test]
fn a_policy_change_reaches_the_config_map_but_keeps_the_pod_template() {
    let base = rendered(&policies());
    let mut changed = policies();
    changed[0] = policy("payments", "payments", "  retry: {attempts: 4}\n");
    let after = rendered(&changed);
    assert_ne!(
        after.config_map, base.config_map,
        "the sidecars get the new policy"
    );
    assert_eq!(
        after.deployment, base.deployment,
        "running sidecars reload it: no rollout"
    );

    let settings = Settings {
        tracing: trellis_api::proxy::Tracing {
            otlp_endpoint: Some("http://jaeger:4317".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let traced = render(&orders(), &policies(), &settings).unwrap();
    assert_ne!(
        traced.restart_hash, base.restart_hash,
        "tracing applies at start only: the pods roll"
    );
}

#[test]
fn one_replica_gets_no_pdb_and_static_discovery_uses_given_addresses() {
    let mut svc = orders();
    svc.spec.replicas = 1;
    let settings = Settings {
        discovery: DiscoveryMode::Static(
            [("users".to_string(), vec!["127.0.0.1:9001".to_string()])].into(),
        ),
        ..Default::default()
    };
    let r = render(&svc, &[], &settings).unwrap();
    assert!(r.pdb.is_none());
    let users = r
        .proxy_config
        .upstreams
        .iter()
        .find(|u| u.name == "users")
        .unwrap();
    assert_eq!(
        users.discovery,
        Discovery::Static {
            addresses: vec!["127.0.0.1:9001".into()]
        }
    );
}

#[test]
fn bad_services_are_refused_with_a_reason() {
    let mut svc = orders();
    svc.spec.image = " ".into();
    assert_eq!(
        render(&svc, &[], &Settings::default()),
        Err(RenderError::EmptyImage)
    );
    let mut svc = orders();
    svc.spec.port = trellis_api::bounded::Port::new(4143).unwrap();
    assert_eq!(
        render(&svc, &[], &Settings::default()),
        Err(RenderError::PortConflict(4143))
    );
    let mut svc = orders();
    svc.metadata.name = None;
    assert_eq!(
        render(&svc, &[], &Settings::default()),
        Err(RenderError::MissingName)
    );
}
