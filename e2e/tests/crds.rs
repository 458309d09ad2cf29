//! The CRDs as the real API server sees them: accepted (structural), explained,
//! and enforcing their validation on invalid objects.

use std::time::Duration;

use trellis_e2e::{ControlPlane, eventually, install_crds, repo_root, test_namespace};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn crds_apply_and_explain() {
    let Some(cp) = ControlPlane::attach("crds_apply_and_explain") else {
        return;
    };
    let crds = repo_root().join("crds");
    let out = cp
        .kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply -f crds/ failed: {}",
        text(&out)
    );
    let client = cp.client().await.unwrap();
    install_crds(&client).await.unwrap();

    // The API server publishes a new CRD's OpenAPI a moment after it is established.
    let explain = |what: &'static str| {
        let cp = cp.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                let out = cp.kubectl(&["explain", what]).ok()?;
                out.status.success().then(|| text(&out))
            })
            .await
            .unwrap_or_else(|e| panic!("kubectl explain {what}: {e}"))
        }
    };
    let explained = explain("meshservice.spec").await;
    for field in [
        "image",
        "port",
        "protocol",
        "upstreams",
        "replicas",
        "health",
        "proxy",
    ] {
        assert!(
            explained.contains(field),
            "explain lacks {field}: {explained}"
        );
    }
    let explained = explain("resiliencepolicy.spec.circuitBreaker").await;
    assert!(explained.contains("failureRateThreshold"), "{explained}");
}

const POLICY: &str = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: NAME, namespace: NS}
spec:
  targetRef: {kind: MeshService, name: payments}
  timeout: {request: 2s}
  retry:
    attempts: 3
    perTryTimeout: 500ms
    backoff: {base: 25ms, max: 1s}
  circuitBreaker: {openDuration: 5s, maxOpenDuration: 60s}
  routes:
  - match: {pathPrefix: /api}
    retry: {attempts: 1}
"#;

/// Applies POLICY with one substitution; returns (accepted, kubectl output).
fn apply(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    from: &str,
    to: &str,
    validate: &str,
) -> (bool, String) {
    assert!(POLICY.contains(from), "{from}");
    let doc = POLICY
        .replace("NAME", name)
        .replace("NS", ns)
        .replacen(from, to, 1);
    let out = cp
        .kubectl_stdin(
            &["apply", &format!("--validate={validate}"), "-f", "-"],
            &doc,
        )
        .unwrap();
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn invalid_policies_are_rejected_by_the_api_server() {
    let Some(cp) = ControlPlane::attach("invalid_policies_are_rejected_by_the_api_server") else {
        return;
    };
    let client = cp.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = test_namespace(&client, "crd-validation").await.unwrap();

    let (ok, out) = apply(&cp, &ns, "valid", "attempts: 3", "attempts: 3", "strict");
    assert!(ok, "the base policy must be valid: {out}");

    // (substitution, a field path the message must name, a phrase it must contain)
    let cases = [
        (
            "request: 2s",
            "request: 2 seconds",
            "spec.timeout.request",
            "should match",
        ),
        (
            "base: 25ms",
            "base: \"1.5s\"",
            "spec.retry.backoff.base",
            "should match",
        ),
        (
            "attempts: 3",
            "attempts: 0",
            "spec.retry.attempts",
            "greater than or equal to 1",
        ),
        (
            "attempts: 3",
            "attempts: 11",
            "spec.retry.attempts",
            "less than or equal to 10",
        ),
        (
            "perTryTimeout: 500ms",
            "perTryTimeout: 3s",
            "spec",
            "retry.perTryTimeout must not exceed timeout.request",
        ),
        (
            "base: 25ms",
            "base: 2s",
            "spec.retry.backoff",
            "backoff.base must not exceed backoff.max",
        ),
        (
            "openDuration: 5s",
            "openDuration: 90s",
            "spec.circuitBreaker",
            "openDuration must not exceed maxOpenDuration",
        ),
        (
            "match: {pathPrefix: /api}",
            "match: {}",
            "spec.routes[0].match",
            "a route match needs pathPrefix, path or methods",
        ),
    ];
    for (i, (from, to, path, phrase)) in cases.iter().enumerate() {
        let (ok, out) = apply(&cp, &ns, &format!("bad-{i}"), from, to, "strict");
        assert!(!ok, "{to:?} was accepted: {out}");
        assert!(
            out.contains(path) && out.contains(phrase),
            "{to:?}: message should name {path} and say {phrase:?}: {out}"
        );
    }
}

#[tokio::test]
async fn unknown_fields_are_rejected_strictly_and_pruned_otherwise() {
    let Some(cp) =
        ControlPlane::attach("unknown_fields_are_rejected_strictly_and_pruned_otherwise")
    else {
        return;
    };
    let client = cp.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = test_namespace(&client, "crd-unknown").await.unwrap();

    // kubectl asks for strict field validation: the typo is an error naming it.
    let (ok, out) = apply(
        &cp,
        &ns,
        "typo",
        "attempts: 3",
        "attempts: 3\n    attemps: 4",
        "strict",
    );
    assert!(!ok, "a typo was accepted under strict validation: {out}");
    assert!(
        out.contains("unknown field") && out.contains("attemps"),
        "{out}"
    );

    // Without it the API server prunes what the schema does not know (structural
    // schemas are pruning schemas): the object is stored without the typo.
    let (ok, out) = apply(
        &cp,
        &ns,
        "pruned",
        "attempts: 3",
        "attempts: 3\n    attemps: 4",
        "false",
    );
    assert!(ok, "{out}");
    let out = cp
        .kubectl(&["get", "rpol", "pruned", "-n", &ns, "-o", "json"])
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["spec"]["retry"]["attempts"], 3);
    assert!(
        stored["spec"]["retry"].get("attemps").is_none(),
        "not pruned: {stored}"
    );
}
