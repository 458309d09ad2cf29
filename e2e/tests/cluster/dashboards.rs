//! The dashboards against the cluster: Debian's Prometheus on the host
//! scrapes the sidecars and the operator through the API server's pod proxy
//! (the pods listed by the test into file-based discovery: Debian builds
//! Prometheus without Kubernetes discovery), with the labels the chart's
//! PodMonitor gives. A mesh of test apps carries load: a driver `web` calls
//! `flaky` (two pods, one failing: retries, an ejection), `down` (always
//! 503: retry budget, breaker, fallback) and `slow` (a bulkhead of one),
//! and a MeshService the API server refuses keeps the operator's error
//! series busy. Then every panel query of every dashboard, with its
//! variables substituted (this namespace, or the operator's; `web` as the
//! service, or the service whose panel it is), returns at least one series.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use trellis_api::render::SERVICE_LABEL;
use trellis_e2e::cluster::{Cluster, OPERATOR_NAMESPACE, app_service, name, report, shared};
use trellis_e2e::delivery::{Dashboard, substitute_variables};
use trellis_e2e::prometheus::{self, ClusterScrape, PodTarget, Prometheus, RATE_WINDOW};
use trellis_e2e_app::api::{Fault, LoadSpec};

use crate::support::READY;

/// The services of the per-service dashboard, the caller first.
const SERVICES: [&str; 4] = ["web", "flaky", "down", "slow"];

/// Three quick attempts on a 503, within a budget.
fn retry_503(ratio: f64, min_per_second: u32) -> serde_json::Value {
    json!({
        "attempts": 3,
        "backoff": {"base": "1ms", "max": "5ms", "jitter": "full"},
        "retryOn": ["503"],
        "budget": {"ratio": ratio, "minPerSecond": min_per_second, "window": "10s"}
    })
}

#[tokio::test]
async fn every_panel_query_returns_series_scraped_from_the_cluster() {
    let Some(cluster) =
        Cluster::attach("every_panel_query_returns_series_scraped_from_the_cluster").await
    else {
        return;
    };
    let Some(prometheus_bin) = prometheus::binary() else {
        return;
    };
    let _guard = shared().await;
    let mesh = cluster.namespace("dashboards").await.unwrap();
    let ns = mesh.ns.clone();

    for (svc, replicas) in [("flaky", 2), ("down", 1), ("slow", 1)] {
        mesh.apply_service(svc, app_service("echo", replicas, &[], json!([])))
            .await
            .unwrap();
    }
    mesh.apply_service(
        "web",
        app_service("driver", 1, &["flaky", "down", "slow"], json!([])),
    )
    .await
    .unwrap();
    // Through the validating webhook: its series.
    mesh.apply_policy(
        "flaky",
        "flaky",
        json!({
            "retry": retry_503(0.5, 50),
            "outlierDetection": {"consecutiveFailures": 3, "baseEjection": "30s", "maxEjectionPercent": 50}
        }),
    )
    .await
    .unwrap();
    mesh.apply_policy(
        "down",
        "down",
        json!({
            "retry": retry_503(0.1, 1),
            "circuitBreaker": {"failureRateThreshold": 50, "minimumRequests": 5, "window": "10s",
                               "consecutiveFailures": 5, "openDuration": "1s", "maxOpenDuration": "2s",
                               "halfOpenRequests": 1},
            "fallback": {"status": 503, "body": "{\"error\":\"down unavailable\"}", "contentType": "application/json"}
        }),
    )
    .await
    .unwrap();
    mesh.apply_policy(
        "slow",
        "slow",
        json!({
            "bulkhead": {"maxConcurrent": 1, "maxQueued": 0, "queueTimeout": "10ms"},
            "inbound": {"rateLimit": {"requestsPerSecond": 1000, "burst": 1000}}
        }),
    )
    .await
    .unwrap();
    // The API server refuses its Deployment: reconcile errors and requeues.
    let mut broken = app_service("echo", 1, &[], json!([]));
    broken["resources"] = json!({"requests": {"cpu": "-1"}});
    mesh.apply_service("broken", broken).await.unwrap();

    let flaky = mesh.wait_ready("flaky", 2, READY).await.unwrap();
    let down = mesh.wait_ready("down", 1, READY).await.unwrap();
    mesh.wait_ready("slow", 1, READY).await.unwrap();
    let web = name(&mesh.wait_ready("web", 1, READY).await.unwrap()[0]);
    mesh.set_fault(&name(&flaky[1]), &Fault::failing(503))
        .await
        .unwrap();
    mesh.set_fault(&name(&down[0]), &Fault::failing(503))
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("trellis-cluster-prometheus-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let scrape = ClusterScrape::new(&cluster.kubeconfig, &dir).unwrap();
    let sidecars = port_targets(&cluster, &ns, "trellis-admin").await;
    assert_eq!(sidecars.len(), 5, "meshed pods in {ns}");
    scrape.write_targets("trellis-proxy", &sidecars).unwrap();
    let operators = port_targets(&cluster, OPERATOR_NAMESPACE, "metrics").await;
    assert!(!operators.is_empty(), "no operator pod");
    scrape
        .write_targets("trellis-operator", &operators)
        .unwrap();
    let prom = Prometheus::start_with_config(&prometheus_bin, &scrape.config, &dir)
        .await
        .unwrap();

    // Load on every path at once, long enough for rates to see several scrapes.
    let secs = 20;
    let mut runs = Vec::new();
    for (authority, path, rps) in [
        ("flaky", "/api", 40),
        ("down", "/api", 20),
        ("slow", "/api?sleepMs=100", 40),
    ] {
        let spec = LoadSpec {
            authority: authority.into(),
            path: path.into(),
            rps,
            total: u64::from(rps) * secs,
            timeout_ms: 5_000,
        };
        runs.push((authority, mesh.start_load(&web, &spec).await.unwrap()));
    }
    for (authority, id) in runs {
        let r = mesh
            .finish_load(&web, id, Duration::from_secs(secs * 4))
            .await
            .unwrap();
        eprintln!("load web → {authority}: {r:?}");
    }
    // Two more scrapes after the load.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let up = prom.query("up == 1").await.unwrap();
    assert_eq!(
        up.len(),
        sidecars.len() + operators.len(),
        "scraped: {up:?}"
    );

    let mut lines = Vec::new();
    let mut empty = Vec::new();
    for d in Dashboard::all().unwrap() {
        let (namespace, services): (&str, &[&str]) = if d.file == "operator.json" {
            (OPERATOR_NAMESPACE, &[""])
        } else if d.file == "mesh-overview.json" {
            (&ns, &[".+"])
        } else {
            (&ns, &SERVICES)
        };
        for (title, expr) in d.queries() {
            let mut found = None;
            for service in services {
                let q = substitute_variables(&expr, RATE_WINDOW, namespace, service);
                let n = prom.query(&q).await.unwrap().len();
                if n > 0 {
                    found = Some((service, n));
                    break;
                }
            }
            let file = d.file.trim_end_matches(".json");
            match found {
                Some((service, n)) => {
                    let chosen = match *service {
                        "" => format!("namespace={namespace}"),
                        ".+" => format!("namespace={namespace}, service=All"),
                        s => format!("namespace={namespace}, service={s}"),
                    };
                    lines.push(format!("{file} / {title} [{chosen}]: {n} series"));
                }
                None => {
                    lines.push(format!("{file} / {title}: 0 series"));
                    empty.push(format!("{file} / {title}: {expr}"));
                }
            }
        }
    }
    println!("{}", lines.join("\n"));
    report(
        "dashboard queries with series",
        (lines.len() - empty.len()) as f64,
        "queries",
    );
    // 9 + 13 + 17 queries (e2e/tests/dashboards.rs checks their shape).
    assert!(lines.len() >= 39, "only {} queries", lines.len());
    assert!(
        empty.is_empty(),
        "queries without a series:\n{}",
        empty.join("\n")
    );
    mesh.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The running pods of `namespace` with a container port named `port`, as
/// scrape targets (`service`: the pod's MeshService label).
async fn port_targets(cluster: &Cluster, namespace: &str, port: &str) -> Vec<PodTarget> {
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in pods.items {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
            continue;
        }
        let number = p
            .spec
            .iter()
            // The sidecar is a native sidecar: an init container.
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(port))
            .map(|cp| cp.container_port);
        let Some(number) = number else { continue };
        out.push(PodTarget {
            namespace: namespace.to_string(),
            pod: name(&p),
            port: u16::try_from(number).unwrap(),
            service: p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_LABEL).cloned()),
        });
    }
    out
}
