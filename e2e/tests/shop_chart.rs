//! The shop chart renders the MeshServices of examples/shop and the
//! ResiliencePolicies of examples/policies (one source: the chart links to
//! them), moved into the release's namespace, with the values applied; the
//! services' connections come from the chart's Secrets, and RabbitMQ and
//! PostgreSQL come with it unless external URLs are given.

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
            // The env is the chart's (checked below); the rest is the example's.
            let mut g_spec = g["spec"].clone();
            let mut w_spec = w["spec"].clone();
            for spec in [&mut g_spec, &mut w_spec] {
                if let Some(m) = spec.as_mapping_mut() {
                    m.remove("env");
                }
            }
            assert_eq!(g_spec, w_spec, "{kind} {name}");
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

/// The names of a container's or MeshService's env vars taken from a Secret, with the Secret and key.
fn secret_refs(env: &Value) -> BTreeMap<String, (String, String)> {
    env.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            Some((
                e["name"].as_str()?.to_string(),
                (
                    r["name"].as_str()?.to_string(),
                    r["key"].as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

fn string_data(objects: &[Value], name: &str) -> BTreeMap<String, String> {
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Secret {name}"));
    serde_yaml::from_value(secret["stringData"].clone()).unwrap()
}

const WITH_DATABASE: [&str; 5] = ["users", "products", "orders", "payments", "notifications"];

#[test]
fn services_take_their_connections_from_the_chart_secrets() {
    let examples = examples("examples/shop", "MeshService");
    let services = rendered(&[], "MeshService");
    for (name, svc) in &services {
        let env = &svc["spec"]["env"];
        let refs = secret_refs(env);
        let example_env = env_values(&examples[name]["spec"]["env"]);
        if example_env.contains_key("AMQP_URL") {
            assert_eq!(
                refs["AMQP_URL"],
                ("shop-amqp".into(), "AMQP_URL".into()),
                "{name}"
            );
        }
        if example_env.contains_key("JWT_SECRET") {
            assert_eq!(
                refs["JWT_SECRET"],
                ("shop-jwt".into(), "JWT_SECRET".into()),
                "{name}"
            );
        }
        if WITH_DATABASE.contains(&name.as_str()) {
            assert_eq!(
                refs["DATABASE_URL"],
                (format!("{name}-db"), "DATABASE_URL".into()),
                "{name}"
            );
            assert_eq!(env_values(env)["DATABASE_STARTUP_TIMEOUT"], "120s");
        } else {
            assert!(!refs.contains_key("DATABASE_URL"), "{name}");
        }
        // No credentials left in plain values.
        let plain = env_values(env);
        for secret in ["AMQP_URL", "JWT_SECRET", "DATABASE_URL"] {
            assert!(
                !plain.contains_key(secret),
                "{name}: {secret} in plain text"
            );
        }
        assert!(!plain.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"), "{name}");
    }
    assert_eq!(services.len(), 6);

    let traced = rendered(
        &["otlp.endpoint=http://jaeger-collector:4317"],
        "MeshService",
    );
    for (name, svc) in &traced {
        assert_eq!(
            env_values(&svc["spec"]["env"])["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://jaeger-collector:4317",
            "{name}"
        );
    }
}

#[test]
fn rabbitmq_and_postgres_come_with_a_database_and_user_per_service() {
    let objects = render_chart(&shop_chart(), "shop", NS, &[]).unwrap();
    let ids: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] != "MeshService" && o["kind"] != "ResiliencePolicy")
        .map(trellis_e2e::delivery::object_id)
        .collect();
    let mut want: Vec<String> = [
        "Secret/shop-jwt",
        "Secret/shop-amqp",
        "Deployment/rabbitmq",
        "Service/rabbitmq",
        "Secret/postgres",
        "PersistentVolumeClaim/postgres",
        "Deployment/postgres",
        "Service/postgres",
    ]
    .map(String::from)
    .to_vec();
    want.extend(WITH_DATABASE.map(|s| format!("Secret/{s}-db")));
    let (mut got_sorted, mut want_sorted) = (ids, want);
    got_sorted.sort();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
    for o in &objects {
        assert_eq!(o["metadata"]["namespace"], NS, "{o:?}");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/instance"],
            "shop"
        );
    }

    let amqp = string_data(&objects, "shop-amqp");
    let password = &amqp["RABBITMQ_PASSWORD"];
    assert!(password.len() >= 16);
    assert_eq!(
        amqp["AMQP_URL"],
        format!("amqp://shop:{password}@rabbitmq:5672/%2f")
    );
    assert!(amqp["rabbitmq.conf"].contains(&format!("default_pass = {password}")));

    let init = &string_data(&objects, "postgres")["init.sql"];
    for db in WITH_DATABASE {
        let secret = string_data(&objects, &format!("{db}-db"));
        let pw = &secret["password"];
        assert_eq!(
            secret["DATABASE_URL"],
            format!("postgres://{db}:{pw}@postgres:5432/{db}")
        );
        assert!(
            init.contains(&format!("CREATE ROLE \"{db}\" LOGIN PASSWORD '{pw}';")),
            "{init}"
        );
        assert!(
            init.contains(&format!("CREATE DATABASE \"{db}\" OWNER \"{db}\";")),
            "{init}"
        );
    }

    // Both servers run as non-root users, without privilege escalation.
    for name in ["rabbitmq", "postgres"] {
        let deploy = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
            .unwrap();
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], format!("trellis/{name}:dev"));
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{name}"
        );
    }
}

#[test]
fn external_broker_and_databases_replace_the_chart_servers() {
    let mut sets = vec![
        "rabbitmq.enabled=false".to_string(),
        "rabbitmq.externalUrl=amqp://u:p@broker.example:5672/%2f".to_string(),
        "postgres.enabled=false".to_string(),
    ];
    for db in WITH_DATABASE {
        sets.push(format!(
            "postgres.externalUrls.{db}=postgres://{db}:pw@db.example/{db}"
        ));
    }
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let objects = render_chart(&shop_chart(), "shop", NS, &sets).unwrap();
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Deployment" || o["kind"] == "PersistentVolumeClaim"),
        "no server of our own"
    );
    assert_eq!(
        string_data(&objects, "shop-amqp")["AMQP_URL"],
        "amqp://u:p@broker.example:5672/%2f"
    );
    for db in WITH_DATABASE {
        assert_eq!(
            string_data(&objects, &format!("{db}-db"))["DATABASE_URL"],
            format!("postgres://{db}:pw@db.example/{db}")
        );
    }
    // A missing URL is a clear error, not a service that cannot start.
    let err = render_chart(&shop_chart(), "shop", NS, &["postgres.enabled=false"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("postgres.externalUrls.users is required"),
        "{err:#}"
    );
    let err = render_chart(&shop_chart(), "shop", NS, &["rabbitmq.enabled=false"]).unwrap_err();
    assert!(
        format!("{err:#}").contains("rabbitmq.externalUrl is required"),
        "{err:#}"
    );
}

#[test]
fn postgres_data_lives_in_a_claim_or_in_the_pod() {
    let claim = |sets: &[&str]| {
        render_chart(&shop_chart(), "shop", NS, sets)
            .unwrap()
            .into_iter()
            .find(|o| o["kind"] == "PersistentVolumeClaim")
    };
    let pvc = claim(&[
        "postgres.persistence.size=3Gi",
        "postgres.persistence.storageClass=fast",
    ])
    .unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "3Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
    assert!(claim(&["postgres.persistence.enabled=false"]).is_none());
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
