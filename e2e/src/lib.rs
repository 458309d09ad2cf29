//! Attaches tests to the real control plane that `scripts/test.sh` (or
//! `eval "$(e2e/control-plane.sh up)"`) started.
//!
//! The control plane is shared by the whole run: each test works in a
//! namespace of its own, so tests run in parallel without seeing each other.
//! Without `TRELLIS_TEST_KUBECONFIG` a test says it is skipped and returns —
//! except under CI, where a missing control plane is a failure, not a skip.

pub mod cluster;
pub mod delivery;
pub mod jaeger;
pub mod local;
pub mod prometheus;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use trellis_api::crd::{MeshService, ResiliencePolicy};

/// Where the running control plane is.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// The control plane's folder (`TRELLIS_CP_DIR`), needed to restart the API server.
    pub dir: Option<PathBuf>,
}

impl ControlPlane {
    /// The control plane of this run, or `None` (after saying so) when there is none.
    pub fn attach(test: &str) -> Option<ControlPlane> {
        match std::env::var_os("TRELLIS_TEST_KUBECONFIG") {
            Some(path) => Some(ControlPlane {
                kubeconfig: PathBuf::from(path),
                dir: std::env::var_os("TRELLIS_CP_DIR").map(PathBuf::from),
            }),
            None if std::env::var_os("CI").is_some() => {
                panic!(
                    "{test}: CI must run this against a real control plane: TRELLIS_TEST_KUBECONFIG is not set"
                )
            }
            None => {
                eprintln!(
                    "{test}: skipped, TRELLIS_TEST_KUBECONFIG is not set (bash scripts/test.sh sets it)"
                );
                None
            }
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Runs the run's kubectl (v1.36, built beside the API server) with this kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let kubectl = std::env::var("TRELLIS_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .with_context(|| format!("running {kubectl}"))
    }

    /// Runs kubectl with `input` on its standard input (`-f -`).
    pub fn kubectl_stdin(
        &self,
        args: &[&str],
        input: &str,
    ) -> anyhow::Result<std::process::Output> {
        use std::io::Write;
        let kubectl = std::env::var("TRELLIS_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut child = Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {kubectl}"))?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Kills the API server and starts it again on the same port and etcd.
    pub fn restart_apiserver(&self) -> anyhow::Result<()> {
        let dir = self.dir.as_ref().context("TRELLIS_CP_DIR is not set")?;
        let script = repo_root().join("e2e/control-plane.sh");
        let status = Command::new("bash")
            .arg(script)
            .arg("restart-apiserver")
            .env("TRELLIS_CP_DIR", dir)
            .status()?;
        if !status.success() {
            bail!("restart-apiserver failed: {status}");
        }
        Ok(())
    }
}

/// The operator's ServiceAccount as `operator/rbac.yaml` declares it: (namespace, name).
pub fn operator_service_account() -> anyhow::Result<(String, String)> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(repo_root().join("operator/rbac.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if v["kind"].as_str() == Some("ServiceAccount") {
            let name = v["metadata"]["name"]
                .as_str()
                .context("ServiceAccount name")?;
            let ns = v["metadata"]["namespace"]
                .as_str()
                .context("ServiceAccount namespace")?;
            return Ok((ns.to_string(), name.to_string()));
        }
    }
    bail!("operator/rbac.yaml declares no ServiceAccount")
}

/// A client that acts as the operator's ServiceAccount with exactly the
/// permissions of `operator/rbac.yaml` (applied here), by impersonation.
pub async fn operator_client(cp: &ControlPlane) -> anyhow::Result<Client> {
    let (namespace, name) = operator_service_account()?;
    // Once per test process: tests run in parallel and would race on creating the same objects.
    static APPLIED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    APPLIED
        .get_or_init(|| apply_rbac(cp, &namespace).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Ok(Client::try_from(config)?)
}

fn apply_rbac(cp: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n");
    let out = cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &ns_yaml)?;
    if !out.status.success() {
        bail!(
            "creating namespace {namespace}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rbac = repo_root().join("operator/rbac.yaml");
    let out = cp.kubectl(&["apply", "--server-side", "-f", &rbac.to_string_lossy()])?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f operator/rbac.yaml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Creates a namespace unique to this test.
pub async fn test_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}

/// Installs (or updates) both CRDs and waits until the API server serves them.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("trellis-e2e").force();
    for crd in [MeshService::crd(), ResiliencePolicy::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
        eventually(Duration::from_secs(30), || async {
            let crd = crds.get(&name).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await
        .with_context(|| format!("CRD {name} not established"))?;
    }
    Ok(())
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
