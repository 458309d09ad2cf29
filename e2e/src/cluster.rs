//! Attaches tests to a real Kubernetes cluster with Trellis installed (the
//! CRDs and the operator running in the cluster): `e2e/kind.sh up` makes one,
//! and any cluster whose kubeconfig is in `TRELLIS_CLUSTER_KUBECONFIG` works.
//!
//! Tests drive the mesh the way its users see it: they create MeshServices
//! and ResiliencePolicies, and reach pods only through the API server's pod
//! proxy: the driver's control API, the echo's fault knobs, and each
//! sidecar's admin port (`/metrics`, `/config`, `/endpoints`).
//!
//! Each test works in a namespace of its own. Tests that disturb the whole
//! cluster (kill pods under load, restart the API server, delete the leading
//! operator) hold [`exclusive`]; the others hold [`shared`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use crate::eventually;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::inject::PROXY_CONTAINER;
use trellis_api::proxy::{ADMIN_PORT, INBOUND_PORT, ProxyConfig};
use trellis_api::render::SERVICE_LABEL;
use trellis_e2e_app::api::{
    CallResult, CallSpec, FAULT_PATH, Fault, GrpcResult, GrpcSpec, HITS_PATH, Hits, LoadReport,
    LoadSpec, LoadStarted, READY_PATH, Readiness,
};

/// The environment variable naming the cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "TRELLIS_CLUSTER_KUBECONFIG";
/// Label on every namespace the tests create.
pub const TEST_LABEL: &str = "trellis.dev/e2e";
/// The namespace of the in-cluster operator (operator/deploy.yaml).
pub const OPERATOR_NAMESPACE: &str = "trellis-system";
/// The port the test app listens on (localhost, behind its sidecar).
pub const APP_PORT: u32 = 8080;

// Async-aware: each test has its own runtime, and holds the guard across awaits.
static CLUSTER_LOCK: RwLock<()> = RwLock::const_new(());

/// Held by tests that can run beside others.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER_LOCK.read().await
}

/// Held by tests that disturb the whole cluster.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER_LOCK.write().await
}

/// The test app's image (e2e/images.sh builds it).
pub fn app_image() -> String {
    std::env::var("TRELLIS_E2E_APP_IMAGE").unwrap_or_else(|_| "trellis/e2e-app:dev".into())
}

/// A number a test measured: printed, and appended as a JSON line to
/// `TRELLIS_E2E_REPORT` when set (`.ci/run` prints them at the end).
pub fn report(what: &str, value: f64, unit: &str) {
    eprintln!("MEASURED {what}: {value:.3} {unit}");
    append_report(json!({"what": what, "value": value, "unit": unit}));
}

/// What a test saw that is not a number (a span tree, series counts):
/// printed, and appended to `TRELLIS_E2E_REPORT` as `{"what", "text"}`.
pub fn report_text(what: &str, text: &str) {
    println!("{what}:\n{text}");
    append_report(json!({"what": what, "text": text}));
}

fn append_report(line: Value) {
    if let Ok(path) = std::env::var("TRELLIS_E2E_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A cluster with Trellis installed.
#[derive(Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub client: Client,
}

impl Cluster {
    /// The cluster of this run, or `None` (after saying so) when there is none
    /// — except under CI, where a missing cluster fails the test.
    pub async fn attach(test: &str) -> Option<Cluster> {
        let Some(path) = std::env::var_os(KUBECONFIG_ENV) else {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: CI must run this against a cluster: {KUBECONFIG_ENV} is not set");
            }
            eprintln!(
                "{test}: skipped, {KUBECONFIG_ENV} is not set (eval \"$(e2e/kind.sh up)\" sets it)"
            );
            return None;
        };
        let kubeconfig = PathBuf::from(path);
        let client = client(&kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot reach the cluster: {e:#}"));
        Some(Cluster { kubeconfig, client })
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<Mesh> {
        let name = format!(
            "{prefix}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
                & 0xffffff
        );
        self.create_namespace(name).await
    }

    /// The namespace `name`, fresh, for a test that needs a fixed address
    /// (`SERVICE.name`). One an earlier run left is deleted first; one the
    /// tests did not make is an error, never deleted.
    pub async fn fixed_namespace(&self, name: &str) -> anyhow::Result<Mesh> {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        if let Some(old) = namespaces.get_opt(name).await? {
            let ours = old
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(TEST_LABEL));
            if !ours {
                bail!("namespace {name} exists and was not made by the tests; remove it first");
            }
            let _ = namespaces.delete(name, &DeleteParams::background()).await;
            eventually(Duration::from_secs(180), || async {
                namespaces.get_opt(name).await.ok()?.is_none().then_some(())
            })
            .await
            .with_context(|| format!("namespace {name} left by an earlier run is not gone"))?;
        }
        self.create_namespace(name.to_string()).await
    }

    async fn create_namespace(&self, name: String) -> anyhow::Result<Mesh> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(TEST_LABEL.into(), "true".into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        // Pods need the namespace's default ServiceAccount.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &name);
        eventually(Duration::from_secs(30), || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await
        .context("no default ServiceAccount")?;
        Ok(Mesh {
            client: self.client.clone(),
            ns: name,
        })
    }
}

async fn client(kubeconfig: &PathBuf) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    // Load reports and pod-kill waits outlast the default.
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

/// One test's namespace and what it runs there.
#[derive(Clone)]
pub struct Mesh {
    pub client: Client,
    pub ns: String,
}

/// The test app as a MeshService: the echo, or the driver that calls `upstreams`.
pub fn app_service(role: &str, replicas: i32, upstreams: &[&str], extra_env: Value) -> Value {
    let mut env = vec![
        json!({"name": "APP_ROLE", "value": role}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if let Value::Array(more) = extra_env {
        env.extend(more);
    }
    json!({
        "image": app_image(),
        "replicas": replicas,
        "port": APP_PORT,
        "protocol": "http",
        "upstreams": upstreams,
        "env": env,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "health": {"readinessPath": "/health/ready", "livenessPath": "/health/live"},
    })
}

impl Mesh {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a MeshService with this spec (server-side apply).
    pub async fn apply_service(&self, name: &str, spec: Value) -> anyhow::Result<MeshService> {
        let obj = json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "MeshService",
            "metadata": {"name": name}, "spec": spec,
        });
        Ok(self
            .api::<MeshService>()
            .patch(
                name,
                &PatchParams::apply("trellis-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await?)
    }

    /// Creates or replaces a ResiliencePolicy for `target` with this spec.
    pub async fn apply_policy(
        &self,
        name: &str,
        target: &str,
        mut spec: Value,
    ) -> anyhow::Result<ResiliencePolicy> {
        spec["targetRef"] = json!({"kind": "MeshService", "name": target});
        let obj = json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "ResiliencePolicy",
            "metadata": {"name": name}, "spec": spec,
        });
        Ok(self
            .api::<ResiliencePolicy>()
            .patch(
                name,
                &PatchParams::apply("trellis-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await?)
    }

    /// Sets the MeshService's replicas (a merge patch, as `kubectl scale` would).
    pub async fn scale(&self, name: &str, replicas: i32) -> anyhow::Result<()> {
        self.api::<MeshService>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        Ok(())
    }

    /// The service's pods that run and are not being deleted, by name.
    pub async fn pods(&self, service: &str) -> anyhow::Result<Vec<Pod>> {
        let list = self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{SERVICE_LABEL}={service}")))
            .await?;
        let mut pods: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(pods)
    }

    /// Every pod of the service, terminating ones included.
    pub async fn all_pods(&self, service: &str) -> anyhow::Result<Vec<Pod>> {
        Ok(self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{SERVICE_LABEL}={service}")))
            .await?
            .items)
    }

    /// Waits until the MeshService reports `Ready=True` with `replicas` ready
    /// replicas and exactly that many live pods, all Ready; returns the pods.
    pub async fn wait_ready(
        &self,
        name: &str,
        replicas: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Pod>> {
        let services = self.api::<MeshService>();
        eventually(timeout, || async {
            let svc = services.get(name).await.ok()?;
            let status = svc.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready || status.ready_replicas != Some(replicas as i32) {
                return None;
            }
            let all = self.all_pods(name).await.ok()?;
            let pods = self.pods(name).await.ok()?;
            (all.len() == replicas && pods.len() == replicas && pods.iter().all(pod_ready))
                .then_some(pods)
        })
        .await
        .with_context(|| format!("MeshService {name} not ready with {replicas} pods"))
    }

    /// A request through the API server's pod proxy to `port` of `pod`.
    pub async fn pod_request(
        &self,
        pod: &str,
        port: u16,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<String> {
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy{path}",
            self.ns
        );
        let mut req = http::Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body.unwrap_or_default())?;
        self.client
            .request_text(req)
            .await
            .with_context(|| format!("{method} {path} on pod {pod}:{port}"))
    }

    /// JSON in, JSON out, to the pod's app (through its inbound sidecar).
    pub async fn app_post<T: DeserializeOwned>(
        &self,
        pod: &str,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let text = self
            .pod_request(
                pod,
                INBOUND_PORT,
                "POST",
                path,
                Some(serde_json::to_vec(body)?),
            )
            .await?;
        serde_json::from_str(&text).with_context(|| format!("reading {text:?}"))
    }

    pub async fn app_get<T: DeserializeOwned>(&self, pod: &str, path: &str) -> anyhow::Result<T> {
        let text = self
            .pod_request(pod, INBOUND_PORT, "GET", path, None)
            .await?;
        serde_json::from_str(&text).with_context(|| format!("reading {text:?}"))
    }

    /// Calls from the driver pod, through its outbound sidecar.
    pub async fn call(&self, driver: &str, spec: &CallSpec) -> anyhow::Result<Vec<CallResult>> {
        self.app_post(driver, "/call", spec).await
    }

    /// One GET from the driver to `authority`.
    pub async fn get(
        &self,
        driver: &str,
        authority: &str,
        path: &str,
    ) -> anyhow::Result<CallResult> {
        let spec = CallSpec {
            authority: authority.into(),
            path: path.into(),
            method: "GET".into(),
            count: 1,
            body: String::new(),
        };
        self.call(driver, &spec)
            .await?
            .pop()
            .context("the driver answered no result")
    }

    pub async fn start_load(&self, driver: &str, spec: &LoadSpec) -> anyhow::Result<u64> {
        Ok(self
            .app_post::<LoadStarted>(driver, "/load", spec)
            .await?
            .id)
    }

    pub async fn load_report(&self, driver: &str, id: u64) -> anyhow::Result<LoadReport> {
        self.app_get(driver, &format!("/load/{id}")).await
    }

    /// Waits for a load run to finish and returns its report.
    pub async fn finish_load(
        &self,
        driver: &str,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<LoadReport> {
        let deadline = Instant::now() + timeout;
        loop {
            // The API server may be away for a while (a test restarts it): keep asking.
            if let Ok(report) = self.load_report(driver, id).await
                && report.done
            {
                return Ok(report);
            }
            if Instant::now() > deadline {
                bail!("load {id} on {driver} not done after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn grpc(&self, driver: &str, spec: &GrpcSpec) -> anyhow::Result<GrpcResult> {
        self.app_post(driver, "/grpc", spec).await
    }

    pub async fn set_fault(&self, pod: &str, fault: &Fault) -> anyhow::Result<()> {
        self.app_post::<Fault>(pod, FAULT_PATH, fault).await?;
        Ok(())
    }

    pub async fn set_ready(&self, pod: &str, ready: bool) -> anyhow::Result<()> {
        self.app_post::<Readiness>(pod, READY_PATH, &Readiness { ready })
            .await?;
        Ok(())
    }

    pub async fn hits(&self, pod: &str) -> anyhow::Result<u64> {
        Ok(self.app_get::<Hits>(pod, HITS_PATH).await?.total)
    }

    /// The sidecar's metrics.
    pub async fn metrics(&self, pod: &str) -> anyhow::Result<Metrics> {
        let text = self
            .pod_request(pod, ADMIN_PORT, "GET", "/metrics", None)
            .await?;
        Ok(Metrics::parse(&text))
    }

    /// The config the sidecar runs with now.
    pub async fn proxy_config(&self, pod: &str) -> anyhow::Result<ProxyConfig> {
        let text = self
            .pod_request(pod, ADMIN_PORT, "GET", "/config", None)
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Addresses of the sidecar's endpoints for `upstream` that it would send to.
    pub async fn ready_endpoints(&self, pod: &str, upstream: &str) -> anyhow::Result<Vec<String>> {
        let text = self
            .pod_request(pod, ADMIN_PORT, "GET", "/endpoints", None)
            .await?;
        let v: Value = serde_json::from_str(&text)?;
        let mut out = Vec::new();
        for u in v["upstreams"].as_array().into_iter().flatten() {
            if u["name"] != upstream {
                continue;
            }
            for e in u["endpoints"].as_array().into_iter().flatten() {
                if e["state"] == "ready"
                    && let Some(a) = e["address"].as_str()
                {
                    out.push(a.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn delete_pod(&self, pod: &str) -> anyhow::Result<()> {
        self.api::<Pod>()
            .delete(pod, &DeleteParams::default())
            .await?;
        Ok(())
    }

    pub async fn get_pod(&self, pod: &str) -> anyhow::Result<Pod> {
        Ok(self.api::<Pod>().get(pod).await?)
    }

    /// Deletes the namespace (and so everything the test made in it).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::background())
            .await;
    }
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    condition(pod, "Ready")
}

pub fn condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

pub fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// Restarts of the sidecar and the app containers, summed.
pub fn restarts(pod: &Pod) -> i32 {
    let status = pod.status.as_ref();
    let inits = status
        .and_then(|s| s.init_container_statuses.clone())
        .unwrap_or_default();
    let apps = status
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    inits
        .iter()
        .chain(apps.iter())
        .map(|c| c.restart_count)
        .sum()
}

/// The sidecar's container status.
pub fn sidecar_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == PROXY_CONTAINER)
        .cloned()
}

/// Prometheus text, as `(name, labels) -> value` samples.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// The sum of `name` over the samples whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_over_matching_labels() {
        let m = Metrics::parse(
            "# HELP x\n\
             trellis_requests_total{direction=\"outbound\",peer=\"echo\",status_class=\"2xx\",outcome=\"success\"} 7\n\
             trellis_requests_total{direction=\"outbound\",peer=\"echo\",status_class=\"5xx\",outcome=\"failure\"} 2\n\
             trellis_requests_total{direction=\"inbound\",peer=\"\",status_class=\"2xx\",outcome=\"success\"} 5\n\
             trellis_circuit_state{peer=\"echo\"} 1\n",
        );
        assert_eq!(
            m.sum("trellis_requests_total", &[("direction", "outbound")]),
            9.0
        );
        assert_eq!(
            m.sum(
                "trellis_requests_total",
                &[("peer", "echo"), ("status_class", "2xx")]
            ),
            7.0
        );
        assert_eq!(m.sum("trellis_circuit_state", &[("peer", "echo")]), 1.0);
        assert_eq!(m.sum("trellis_circuit_state", &[("peer", "other")]), 0.0);
    }
}
