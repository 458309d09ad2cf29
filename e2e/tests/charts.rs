//! The trellis Helm chart, checked with the real helm (built from its Go
//! module by e2e/kind/tools.sh): it lints, and `helm template` renders the
//! objects the operator needs, from the same sources as the plain manifests
//! (crds/, operator/rbac.yaml).

use serde_yaml::Value;
use trellis_e2e::delivery::{
    Dashboard, env_values, find, helm, object_id, render_trellis, trellis_chart, yaml_objects,
};
use trellis_e2e::repo_root;

const NS: &str = "mesh-system";

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

fn operator_rbac() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("operator/rbac.yaml")).unwrap();
    yaml_objects(&text).unwrap()
}

#[test]
fn chart_lints_strictly() {
    let chart = trellis_chart();
    let out = helm(&["lint", "--strict", chart.to_str().unwrap()]).unwrap();
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let with_monitors = helm(&[
        "lint",
        "--strict",
        chart.to_str().unwrap(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ])
    .unwrap();
    assert!(
        with_monitors.contains("0 chart(s) failed"),
        "{with_monitors}"
    );
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let names = |dir: &std::path::Path| {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        files
    };
    let generated = repo_root().join("crds");
    let shipped = trellis_chart().join("crds");
    assert_eq!(names(&generated), names(&shipped));
    for name in names(&generated) {
        let a = std::fs::read_to_string(generated.join(&name)).unwrap();
        let b = std::fs::read_to_string(shipped.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/trellis/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/trellis/crds/"
        );
    }
    // Helm installs crds/ itself, before the templates; they are not rendered as templates.
    let objects = render_trellis(NS, &[]).unwrap();
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] != "CustomResourceDefinition")
    );
    let with_crds = yaml_objects(
        &helm(&[
            "template",
            "trellis",
            trellis_chart().to_str().unwrap(),
            "--include-crds",
        ])
        .unwrap(),
    )
    .unwrap();
    let crds: Vec<_> = with_crds
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(object_id)
        .collect();
    assert_eq!(
        crds,
        [
            "CustomResourceDefinition/meshservices.mesh.trellis.dev",
            "CustomResourceDefinition/resiliencepolicies.mesh.trellis.dev"
        ]
    );
}

#[test]
fn rbac_is_operator_rbac_in_the_release_namespace() {
    let rendered = render_trellis(NS, &[]).unwrap();
    let source = operator_rbac();
    assert!(
        source.len() >= 5,
        "operator/rbac.yaml has {} objects",
        source.len()
    );
    for want in &source {
        let id = object_id(want);
        let (kind, name) = id.split_once('/').unwrap();
        let got = find(&rendered, kind, name).unwrap();
        assert_eq!(got["rules"], want["rules"], "{id}: rules");
        assert_eq!(got["roleRef"], want["roleRef"], "{id}: roleRef");
        if want["metadata"]["namespace"].is_string() {
            assert_eq!(got["metadata"]["namespace"], NS, "{id}: namespace");
        } else {
            assert!(
                got["metadata"]["namespace"].is_null(),
                "{id} is cluster-scoped"
            );
        }
        if let Some(subjects) = want["subjects"].as_sequence() {
            let got_subjects = got["subjects"].as_sequence().unwrap();
            assert_eq!(got_subjects.len(), subjects.len(), "{id}: subjects");
            for (g, w) in got_subjects.iter().zip(subjects) {
                assert_eq!(g["kind"], w["kind"]);
                assert_eq!(g["name"], w["name"]);
                assert_eq!(g["namespace"], NS, "{id}: subject namespace");
            }
        }
        assert_eq!(
            got["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{id}"
        );
    }
    // Nothing beyond what operator/rbac.yaml grants.
    let rbac_kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let rendered_rbac: Vec<_> = rendered
        .iter()
        .filter(|o| rbac_kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .map(object_id)
        .collect();
    let source_ids: Vec<_> = source.iter().map(object_id).collect();
    assert_eq!(rendered_rbac, source_ids);
}

#[test]
fn operator_runs_two_hardened_replicas_with_leader_election() {
    let objects = render_trellis(NS, &[]).unwrap();
    let deploy = find(&objects, "Deployment", "trellis-operator").unwrap();
    assert_eq!(deploy["metadata"]["namespace"], NS);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let sa = operator_rbac()
        .into_iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .unwrap();
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], yaml("[ALL]"));
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(env_values(&c["env"])["TRELLIS_LEADER_ELECTION"], "true");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    let pdb = find(&objects, "PodDisruptionBudget", "trellis-operator").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &deploy["spec"]["template"],
    );
    assert_selects(
        &deploy["spec"]["selector"]["matchLabels"],
        &deploy["spec"]["template"],
    );

    // One replica: no budget that would block every drain.
    let single = render_trellis(NS, &["operator.replicas=1"]).unwrap();
    assert!(find(&single, "PodDisruptionBudget", "trellis-operator").is_err());
}

/// The selector's labels are all on the pod template.
fn assert_selects(selector: &Value, template: &Value) {
    let labels = template["metadata"]["labels"].as_mapping().unwrap();
    let selector = selector.as_mapping().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "selector {k:?} not on the pod");
    }
}

#[test]
fn webhooks_point_at_the_operator() {
    let objects = render_trellis(NS, &[]).unwrap();
    let deploy = find(&objects, "Deployment", "trellis-operator").unwrap();
    let svc = find(&objects, "Service", "trellis-operator-webhook").unwrap();
    assert_selects(&svc["spec"]["selector"], &deploy["spec"]["template"]);
    let ports = &deploy["spec"]["template"]["spec"]["containers"][0]["ports"];
    let target = &svc["spec"]["ports"][0]["targetPort"];
    assert!(
        ports
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == target),
        "the Service's targetPort {target:?} is not a container port"
    );

    let injector = find(&objects, "MutatingWebhookConfiguration", "trellis-injector").unwrap();
    let validator = find(
        &objects,
        "ValidatingWebhookConfiguration",
        "trellis-validator",
    )
    .unwrap();
    for (config, failure, path) in [
        (injector, "Ignore", "/inject"),
        (validator, "Fail", "/validate"),
    ] {
        let hook = &config["webhooks"][0];
        assert_eq!(hook["failurePolicy"], failure);
        assert_eq!(
            hook["clientConfig"]["service"]["name"],
            "trellis-operator-webhook"
        );
        assert_eq!(hook["clientConfig"]["service"]["namespace"], NS);
        assert_eq!(hook["clientConfig"]["service"]["path"], path);
        assert_eq!(
            hook["clientConfig"]["service"]["port"],
            svc["spec"]["ports"][0]["port"]
        );
        // The operator writes the CA bundle; an upgrade must not blank it.
        assert!(hook["clientConfig"]["caBundle"].is_null());
    }
    // The operator's own namespace is never injected.
    let excluded = &injector["webhooks"][0]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert!(
        excluded["values"]
            .as_sequence()
            .unwrap()
            .contains(&Value::from(NS))
    );
    assert!(
        excluded["values"]
            .as_sequence()
            .unwrap()
            .contains(&Value::from("kube-system"))
    );
    // The names the operator patches and its RBAC allows.
    let rbac = operator_rbac();
    let role = rbac.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let allowed: Vec<_> = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["resourceNames"].as_sequence())
        .flatten()
        .collect();
    assert!(allowed.contains(&&injector["metadata"]["name"]));
    assert!(allowed.contains(&&validator["metadata"]["name"]));
}

#[test]
fn values_reach_the_operator_and_its_sidecars() {
    let defaults = render_trellis(NS, &[]).unwrap();
    let c = &find(&defaults, "Deployment", "trellis-operator").unwrap()["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(c["image"], "trellis/operator:dev");
    let e = env_values(&c["env"]);
    assert_eq!(e["TRELLIS_PROXY_IMAGE"], "trellis/proxy:dev");
    assert_eq!(e["TRELLIS_PROXY_LOG_LEVEL"], "info");
    assert!(!e.contains_key("TRELLIS_PROXY_OTLP_ENDPOINT"));

    let set = render_trellis(
        NS,
        &[
            "operator.image.tag=1.2.3",
            "proxy.image.repository=example/proxy",
            "proxy.image.tag=4.5.6",
            "proxy.logLevel=debug",
            "proxy.otlpEndpoint=http://jaeger-collector:4317",
            "operator.resources.limits.memory=1Gi",
        ],
    )
    .unwrap();
    let c = &find(&set, "Deployment", "trellis-operator").unwrap()["spec"]["template"]["spec"]["containers"]
        [0];
    assert_eq!(c["image"], "trellis/operator:1.2.3");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    let e = env_values(&c["env"]);
    assert_eq!(e["TRELLIS_PROXY_IMAGE"], "example/proxy:4.5.6");
    assert_eq!(e["TRELLIS_PROXY_LOG_LEVEL"], "debug");
    assert_eq!(
        e["TRELLIS_PROXY_OTLP_ENDPOINT"],
        "http://jaeger-collector:4317"
    );
}

#[test]
fn monitors_are_optional() {
    let defaults = render_trellis(NS, &[]).unwrap();
    assert!(
        defaults
            .iter()
            .all(|o| o["apiVersion"] != "monitoring.coreos.com/v1")
    );
    let objects = render_trellis(NS, &["metrics.serviceMonitor.enabled=true"]).unwrap();
    let deploy = find(&objects, "Deployment", "trellis-operator").unwrap();
    let sm = find(&objects, "ServiceMonitor", "trellis-operator").unwrap();
    let metrics = find(&objects, "Service", "trellis-operator-metrics").unwrap();
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        metrics["spec"]["ports"][0]["name"]
    );
    assert_selects(&sm["spec"]["selector"]["matchLabels"], metrics);
    assert_selects(&metrics["spec"]["selector"], &deploy["spec"]["template"]);
    let pm = find(&objects, "PodMonitor", "trellis-proxy").unwrap();
    // The sidecar's admin port, named as the injector names it.
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["port"],
        "trellis-admin"
    );
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"],
        "service"
    );
}

#[test]
fn dashboards_ship_as_labelled_config_maps() {
    let objects = render_trellis(NS, &[]).unwrap();
    let dashboards = Dashboard::all().unwrap();
    assert_eq!(dashboards.len(), 3);
    for d in &dashboards {
        let stem = d.file.trim_end_matches(".json");
        let cm = find(&objects, "ConfigMap", &format!("trellis-dashboard-{stem}")).unwrap();
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let shipped = cm["data"][d.file.as_str()].as_str().unwrap();
        let file =
            std::fs::read_to_string(trellis_chart().join("dashboards").join(&d.file)).unwrap();
        assert_eq!(shipped.trim_end(), file.trim_end(), "{}", d.file);
    }
    let off = render_trellis(NS, &["dashboards.enabled=false"]).unwrap();
    assert!(off.iter().all(|o| o["kind"] != "ConfigMap"));
}

/// Prints what the chart makes (for the record; `--nocapture`).
#[test]
fn chart_objects() {
    let objects = render_trellis(NS, &["metrics.serviceMonitor.enabled=true"]).unwrap();
    let ids: Vec<_> = objects.iter().map(object_id).collect();
    println!("charts/trellis renders {} objects:", ids.len());
    for id in &ids {
        println!("  {id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an object is rendered twice");
}

/// operator/deploy.yaml is the plain-kubectl path (`kubectl apply -f crds/
/// -f operator/rbac.yaml -f operator/deploy.yaml`); the chart is the source
/// that `e2e/kind.sh up` and users install. With the chart's defaults in
/// trellis-system, both must run the same operator behind the same webhooks.
#[test]
fn plain_manifests_match_the_chart_defaults() {
    let text = std::fs::read_to_string(repo_root().join("operator/deploy.yaml")).unwrap();
    let plain = yaml_objects(&text).unwrap();
    let chart = render_trellis("trellis-system", &[]).unwrap();
    let plain_ids: Vec<_> = plain.iter().map(object_id).collect();
    for id in &plain_ids {
        if id == "Namespace/trellis-system" {
            continue; // helm's --create-namespace
        }
        let (kind, name) = id.split_once('/').unwrap();
        let p = find(&plain, kind, name).unwrap();
        let c = find(&chart, kind, name).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            p["metadata"]["namespace"], c["metadata"]["namespace"],
            "{id}"
        );
        match kind {
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
                assert_eq!(p["webhooks"], c["webhooks"], "{id}");
            }
            "Service" => {
                assert_eq!(p["spec"]["ports"], c["spec"]["ports"], "{id}");
                assert_eq!(
                    p["spec"]["selector"]["app.kubernetes.io/name"],
                    c["spec"]["selector"]["app.kubernetes.io/name"],
                    "{id}"
                );
            }
            "Deployment" => {
                assert_eq!(p["spec"]["replicas"], c["spec"]["replicas"]);
                let (pp, cp) = (
                    &p["spec"]["template"]["spec"],
                    &c["spec"]["template"]["spec"],
                );
                for field in [
                    "serviceAccountName",
                    "securityContext",
                    "terminationGracePeriodSeconds",
                ] {
                    assert_eq!(pp[field], cp[field], "{id} {field}");
                }
                let (pc, cc) = (&pp["containers"][0], &cp["containers"][0]);
                for field in [
                    "name",
                    "image",
                    "imagePullPolicy",
                    "args",
                    "ports",
                    "readinessProbe",
                    "livenessProbe",
                    "resources",
                    "securityContext",
                ] {
                    assert_eq!(pc[field], cc[field], "{id} container {field}");
                }
                // The chart sets every default explicitly; what deploy.yaml sets, it sets alike.
                let chart_env = env_values(&cc["env"]);
                for (var, value) in env_values(&pc["env"]) {
                    assert_eq!(chart_env.get(&var), Some(&value), "{id} env {var}");
                }
            }
            other => panic!("operator/deploy.yaml has a {other} the test does not compare"),
        }
    }
    assert_eq!(plain_ids.len(), 6, "{plain_ids:?}");
}
