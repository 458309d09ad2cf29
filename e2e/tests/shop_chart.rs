//! The shop chart renders the MeshServices of examples/shop and the
//! ResiliencePolicies of examples/policies (one source: the chart links to
//! them), moved into the release's namespace, with the values applied.

use std::collections::BTreeMap;

use serde_yaml::Value;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_e2e::delivery::{env_values, find, helm, render_chart, shop_chart, yaml_objects};
use trellis_e2e::repo_root;

const NS: &str = "demo";

/// The objects of `kind` in the YAML files of `dir`, by name.
fn examples(dir: &str, kind: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(repo_root().join(dir)).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for o in yaml_objects(&text).unwrap() {
            if o["kind"] == kind {
                out.insert(o["metadata"]["name"].as_str().unwrap().to_string(), o);
            }
        }
    }
    out
}

fn rendered(sets: &[&str], kind: &str) -> BTreeMap<String, Value> {
    render_chart(&shop_chart(), "shop", NS, sets)
        .unwrap()
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o))
        .collect()
}

#[test]
fn shop_chart_lints() {
    let out = helm(&["lint", "--strict", shop_chart().to_str().unwrap()]).unwrap();
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn defaults_render_the_examples_in_the_release_namespace() {
    for (kind, dir, count) in [
        ("MeshService", "examples/shop", 6),
        ("ResiliencePolicy", "examples/policies", 3),
    ] {
        let want = examples(dir, kind);
        let got = rendered(&[], kind);
        assert_eq!(want.len(), count, "{dir}");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{kind}"
        );
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(g["spec"], w["spec"], "{kind} {name}");
            assert_eq!(g["metadata"]["namespace"], NS, "{kind} {name}");
            assert_eq!(
                g["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "Helm"
            );
        }
    }
    // And they are what the operator reads.
    for (name, svc) in rendered(&[], "MeshService") {
        serde_yaml::from_value::<MeshService>(svc).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, p) in rendered(&[], "ResiliencePolicy") {
        serde_yaml::from_value::<ResiliencePolicy>(p).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn values_set_tags_replicas_and_the_payments_fault() {
    let services = rendered(
        &[
            "images.tag=1.2.3",
            "replicas.orders=5",
            "payments.failureRate=0.3",
            "payments.addedLatency=200ms",
            "policies.enabled=false",
        ],
        "MeshService",
    );
    assert_eq!(services.len(), 6);
    for (name, svc) in &services {
        assert_eq!(svc["spec"]["image"], format!("trellis/{name}:1.2.3"));
    }
    assert_eq!(services["orders"]["spec"]["replicas"], 5);
    let defaults = examples("examples/shop", "MeshService");
    assert_eq!(
        services["users"]["spec"]["replicas"],
        defaults["users"]["spec"]["replicas"]
    );
    let payments = env_values(&services["payments"]["spec"]["env"]);
    assert_eq!(payments["PAYMENTS_FAILURE_RATE"], "0.3");
    assert_eq!(payments["PAYMENTS_ADDED_LATENCY"], "200ms");
    assert!(rendered(&["policies.enabled=false"], "ResiliencePolicy").is_empty());
}

#[test]
fn jaeger_is_optional_and_every_service_exports_to_it() {
    let off = render_chart(&shop_chart(), "shop", NS, &[]).unwrap();
    assert!(
        off.iter().all(|o| o["metadata"]["name"] != "jaeger"),
        "Jaeger rendered while disabled"
    );
    for (name, svc) in rendered(&[], "MeshService") {
        let env = env_values(&svc["spec"]["env"]);
        assert!(!env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"), "{name}");
    }

    let on = render_chart(&shop_chart(), "shop", NS, &["jaeger.enabled=true"]).unwrap();
    let deployment = find(&on, "Deployment", "jaeger").unwrap();
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["mesh.trellis.dev/inject"], "disabled",
        "Jaeger gets no sidecar"
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "trellis/jaeger:dev");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let config = find(&on, "ConfigMap", "jaeger").unwrap()["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("0.0.0.0:4317") && config.contains("0.0.0.0:16686"),
        "{config}"
    );
    let ports: Vec<_> = find(&on, "Service", "jaeger").unwrap()["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [4317, 16686]);
    let services = rendered(&["jaeger.enabled=true"], "MeshService");
    assert_eq!(services.len(), 6);
    for (name, svc) in &services {
        let env = env_values(&svc["spec"]["env"]);
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("http://jaeger.demo:4317"),
            "{name}"
        );
    }

    // An explicit endpoint wins, with or without the chart's Jaeger.
    let external = rendered(
        &["otlp.endpoint=http://collector.tracing:4317"],
        "MeshService",
    );
    for (name, svc) in &external {
        let env = env_values(&svc["spec"]["env"]);
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("http://collector.tracing:4317"),
            "{name}"
        );
    }
}
