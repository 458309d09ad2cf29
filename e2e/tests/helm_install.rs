//! `helm install`, `helm upgrade` and `helm uninstall` of charts/trellis
//! (and the shop chart's MeshServices on top)
//! against a real API server: a control plane of its own
//! (e2e/control-plane.sh), because the chart's webhooks and cluster-wide
//! RBAC would reach into the other tests' namespaces on the shared one.
//! Nodes are not part of it (pods stay Pending); what is checked is what the
//! API server accepts, keeps, changes and removes.

use std::process::Command;

use serde_json::Value;
use trellis_e2e::delivery::{SHOP, helm, object_id, render_trellis, shop_chart, trellis_chart};
use trellis_e2e::{ControlPlane, repo_root};

const NS: &str = "trellis-system";

/// A control plane started for this test; stopped when dropped.
struct OwnControlPlane {
    dir: String,
    kubeconfig: String,
    kubectl: String,
}

impl OwnControlPlane {
    fn up() -> OwnControlPlane {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/control-plane.sh"))
            .arg("up")
            .env_remove("TRELLIS_CP_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "control-plane.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = String::from_utf8(out.stdout).unwrap();
        let var = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} not exported"))
                .to_string()
        };
        OwnControlPlane {
            dir: var("TRELLIS_CP_DIR"),
            kubeconfig: var("KUBECONFIG"),
            kubectl: var("KUBECTL"),
        }
    }

    /// `kubectl get` of one object as JSON, or `None` when it does not exist.
    fn get(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<Value> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(["get", kind, name, "-o", "json", "--ignore-not-found"])
            .env("KUBECONFIG", &self.kubeconfig);
        if let Some(ns) = namespace {
            cmd.args(["-n", ns]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "kubectl get {kind} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap())
    }

    fn kubectl(&self, args: &[&str]) {
        let out = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn helm(&self, args: &[&str]) -> String {
        let mut all = vec!["--kubeconfig", self.kubeconfig.as_str()];
        all.extend(args);
        helm(&all).unwrap()
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("e2e/control-plane.sh"))
            .arg("down")
            .env("TRELLIS_CP_DIR", &self.dir)
            .output();
    }
}

fn proxy_log_level(deploy: &Value) -> String {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "TRELLIS_PROXY_LOG_LEVEL")
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn helm_installs_upgrades_and_uninstalls_trellis() {
    // The shared control plane's presence says whether this run has the binaries (CI always).
    if ControlPlane::attach("helm_installs_upgrades_and_uninstalls_trellis").is_none() {
        return;
    }
    let cp = OwnControlPlane::up();
    let chart = trellis_chart();
    let chart = chart.to_str().unwrap();

    cp.helm(&["install", "trellis", chart, "-n", NS, "--create-namespace"]);
    // Every object the chart renders is in the API server, and the CRDs too.
    let objects = render_trellis(NS, &[]).unwrap();
    for o in &objects {
        let namespace = o["metadata"]["namespace"].as_str();
        let kind = o["kind"].as_str().unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        let got = cp.get(kind, name, namespace);
        assert!(got.is_some(), "{} not installed", object_id(o));
        assert_eq!(
            got.unwrap()["metadata"]["annotations"]["meta.helm.sh/release-name"],
            "trellis"
        );
    }
    for crd in [
        "meshservices.mesh.trellis.dev",
        "resiliencepolicies.mesh.trellis.dev",
    ] {
        assert!(
            cp.get("crd", crd, None).is_some(),
            "CRD {crd} not installed"
        );
    }
    let deploy = cp.get("deployment", "trellis-operator", Some(NS)).unwrap();
    assert_eq!(proxy_log_level(&deploy), "info");

    // The shop's MeshServices pass the installed CRDs' schema and CEL rules.
    // Its policies wait for the operator: the validating webhook fails closed.
    let shop = shop_chart();
    let shop = shop.to_str().unwrap();
    cp.helm(&[
        "install",
        "shop",
        shop,
        "-n",
        "shop",
        "--create-namespace",
        "--set",
        "policies.enabled=false",
    ]);
    for name in SHOP {
        assert!(
            cp.get("meshservice", name, Some("shop")).is_some(),
            "MeshService {name}"
        );
    }
    cp.helm(&["uninstall", "shop", "-n", "shop", "--wait"]);
    assert!(cp.get("meshservice", "orders", Some("shop")).is_none());

    // The operator writes the webhook CA bundle; an upgrade must keep it.
    cp.kubectl(&[
        "patch",
        "mutatingwebhookconfiguration",
        "trellis-injector",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0EK"}]"#,
    ]);
    cp.helm(&[
        "upgrade",
        "trellis",
        chart,
        "-n",
        NS,
        "--set",
        "proxy.logLevel=debug",
    ]);
    let deploy = cp.get("deployment", "trellis-operator", Some(NS)).unwrap();
    assert_eq!(proxy_log_level(&deploy), "debug");
    let injector = cp
        .get("mutatingwebhookconfiguration", "trellis-injector", None)
        .unwrap();
    assert_eq!(injector["webhooks"][0]["clientConfig"]["caBundle"], "Q0EK");
    assert_eq!(injector["webhooks"][0]["failurePolicy"], "Ignore");
    let history = cp.helm(&["history", "trellis", "-n", NS, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);

    cp.helm(&["uninstall", "trellis", "-n", NS, "--wait"]);
    for o in &objects {
        let namespace = o["metadata"]["namespace"].as_str();
        let kind = o["kind"].as_str().unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            cp.get(kind, name, namespace).is_none(),
            "{} left behind by helm uninstall",
            object_id(o)
        );
    }
    // Helm never deletes CRDs (that would delete every MeshService with them).
    assert!(
        cp.get("crd", "meshservices.mesh.trellis.dev", None)
            .is_some()
    );
}
