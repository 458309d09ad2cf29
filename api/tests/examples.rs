//! Every example file parses, round-trips, and typos or bad values are errors.

use std::path::{Path, PathBuf};

use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::parse::{ParseError, from_yaml};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["examples/shop", "examples/policies"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 9,
        "expected the shop's six services and three policies, got {files:?}"
    );
    files
}

fn kind_of(text: &str) -> String {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    v["kind"].as_str().unwrap_or_default().to_string()
}

fn round_trip<T>(text: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
    let again: T = from_yaml(&serde_yaml::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(parsed, again);
    parsed
}

#[test]
fn every_example_round_trips() {
    let (mut services, mut policies) = (0, 0);
    for file in example_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        match kind_of(&text).as_str() {
            "MeshService" => {
                round_trip::<MeshService>(&text);
                services += 1;
            }
            "ResiliencePolicy" => {
                round_trip::<ResiliencePolicy>(&text);
                policies += 1;
            }
            "Namespace" => {}
            other => panic!("{}: unexpected kind {other:?}", file.display()),
        }
    }
    assert_eq!(services, 6);
    assert!(policies >= 3);
}

const POLICY: &str = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: payments}
  timeout: {request: 2s}
  retry:
    attempts: 3
    backoff: {base: 25ms, max: 1s}
    budget: {ratio: 0.2}
  circuitBreaker: {failureRateThreshold: 50}
  fallback: {status: 503}
"#;

fn policy_error(from: &str, to: &str) -> ParseError {
    assert!(POLICY.contains(from), "{from}");
    from_yaml::<ResiliencePolicy>(&POLICY.replacen(from, to, 1)).unwrap_err()
}

#[test]
fn the_base_document_is_valid() {
    from_yaml::<ResiliencePolicy>(POLICY).unwrap();
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let err = policy_error("attempts: 3", "attempts: 3\n    attemps: 4");
    assert_eq!(err.path, "spec.retry.attemps");
    assert!(err.reason.contains("unknown field `attemps`"), "{err}");
    let err = policy_error(
        "timeout: {request: 2s}",
        "timeout: {request: 2s, total: 3s}",
    );
    assert_eq!(err.path, "spec.timeout.total");
}

#[test]
fn invalid_durations_are_rejected_with_their_path() {
    for bad in ["25", "1.5s", "2 seconds", "-1s", "1d"] {
        let err = policy_error("base: 25ms", &format!("base: \"{bad}\""));
        assert_eq!(err.path, "spec.retry.backoff.base", "{bad}");
        assert!(err.reason.contains("is not a duration like 25ms"), "{err}");
    }
    let err = policy_error("request: 2s", "request: 2 seconds");
    assert_eq!(err.path, "spec.timeout.request");
}

#[test]
fn out_of_range_numbers_are_rejected_with_their_path() {
    for (from, to, path) in [
        ("attempts: 3", "attempts: 0", "spec.retry.attempts"),
        ("attempts: 3", "attempts: 11", "spec.retry.attempts"),
        (
            "failureRateThreshold: 50",
            "failureRateThreshold: 101",
            "spec.circuitBreaker.failureRateThreshold",
        ),
        ("ratio: 0.2", "ratio: 1.5", "spec.retry.budget.ratio"),
    ] {
        let err = policy_error(from, to);
        assert_eq!(err.path, path, "{to}");
        assert!(err.reason.contains("out of range"), "{err}");
    }
}

#[test]
fn bad_service_fields_are_rejected_with_their_path() {
    let svc = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\nmetadata: {name: a}\nspec: {image: x, port: PORT, protocol: PROTO}\n";
    let err = from_yaml::<MeshService>(&svc.replace("PORT", "70000").replace("PROTO", "http"))
        .unwrap_err();
    assert_eq!(err.path, "spec.port");
    let err =
        from_yaml::<MeshService>(&svc.replace("PORT", "8080").replace("PROTO", "tcp")).unwrap_err();
    assert_eq!(err.path, "spec.protocol");
    assert!(err.reason.contains("unknown variant `tcp`"), "{err}");
}
