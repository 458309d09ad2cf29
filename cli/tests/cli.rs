//! The `trellis` binary, run as a user runs it.

use std::io::Write;
use std::process::{Command, Stdio};

fn trellis(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_accepts_the_examples() {
    let (ok, _, err) = trellis(
        &[
            "check",
            "examples/shop/orders.yaml",
            "examples/policies/payments.yaml",
            "examples/policies/orders-routes.yaml",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("examples/policies/payments.yaml: 1 document(s) valid"),
        "{err}"
    );
}

#[test]
fn check_names_the_bad_field() {
    let doc = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p}\nspec:\n  targetRef: {kind: MeshService, name: x}\n  retry: {attempts: 11}\n";
    let (ok, _, err) = trellis(&["check", "-"], doc);
    assert!(!ok);
    assert!(
        err.contains("spec.retry.attempts: 11 is out of range 1..=10"),
        "{err}"
    );
}

#[test]
fn check_rejects_what_the_webhook_denies() {
    // The second route can never match: the first is tried before it and covers it.
    let doc = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p}\nspec:\n  targetRef: {kind: MeshService, name: x}\n  routes:\n  - match: {pathPrefix: /api, methods: [GET, POST]}\n    retry: {attempts: 1}\n  - match: {pathPrefix: /api, methods: [POST]}\n    retry: {attempts: 2}\n";
    let (ok, _, err) = trellis(&["check", "-"], doc);
    assert!(!ok, "{err}");
    assert!(
        err.contains("routes[1]") && err.contains("can never match"),
        "{err}"
    );
    // A redundant prefix is only a warning.
    let doc = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p}\nspec:\n  targetRef: {kind: MeshService, name: x}\n  routes:\n  - match: {pathPrefix: /a, path: /a/b}\n    retry: {attempts: 1}\n";
    let (ok, _, err) = trellis(&["check", "-"], doc);
    assert!(ok, "{err}");
    assert!(err.contains("warning: routes[0].match"), "{err}");
}

#[test]
fn inject_reads_stdin_and_writes_manifests() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {mesh.trellis.dev/inject: enabled}}\nspec:\n  containers: [{name: app, image: busybox}]\n";
    let (ok, out, err) = trellis(&["inject", "--proxy-image", "trellis/proxy:1.2"], pod);
    assert!(ok, "{err}");
    assert!(
        out.contains("name: trellis-proxy") && out.contains("image: trellis/proxy:1.2"),
        "{out}"
    );
    assert!(out.contains("restartPolicy: Always"), "{out}");
}

#[test]
fn crds_prints_both_definitions() {
    let (ok, out, _) = trellis(&["crds"], "");
    assert!(ok);
    assert!(out.contains("name: meshservices.mesh.trellis.dev"));
    assert!(out.contains("name: resiliencepolicies.mesh.trellis.dev"));
}

#[test]
fn check_without_files_fails_on_an_unreachable_cluster() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("check")
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.starts_with("✗ cluster reachable"), "{stdout}");
    assert!(!stdout.contains('✓'), "{stdout}");
}
