//! Debian's Prometheus on a free loopback port, scraping given targets every
//! second, and the dashboards' queries evaluated through its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::delivery::{Dashboard, expand_variables};
use crate::local::{Process, free_port};

/// Scrapes every second; rates over this window see several samples.
pub const RATE_WINDOW: &str = "20s";

/// Debian's Prometheus, or `None` (after saying so) outside CI.
pub fn binary() -> Option<PathBuf> {
    let bin = std::env::var_os("TRELLIS_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: CI installs Debian's prometheus",
            bin.display()
        );
    }
    eprintln!(
        "skipped: {} is missing (apt-get install prometheus)",
        bin.display()
    );
    None
}

/// A scrape target and the labels its series get.
pub struct Target {
    pub addr: SocketAddr,
    pub labels: BTreeMap<&'static str, String>,
}

/// A scrape configuration for a cluster reached only through its API server
/// (`kubeconfig`'s current context): pods found by `kubernetes_sd_configs`,
/// each scraped at `/api/v1/namespaces/NS/pods/POD:PORT/proxy/metrics` with
/// the kubeconfig's client certificate, so the host needs no route to the
/// pod network. Sidecars (port `trellis-admin`) get the `namespace` and
/// `service` labels the chart's PodMonitor gives; the operator (port
/// `metrics` in `operator_namespace`) gets `namespace`. The certificates are
/// written into `dir`.
pub fn kubernetes_config(
    kubeconfig: &Path,
    operator_namespace: &str,
    dir: &Path,
) -> anyhow::Result<String> {
    use base64::Engine;
    let kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let named = |list: &str, name: &serde_yaml::Value, field: &str| {
        kc[list]
            .as_sequence()
            .and_then(|l| l.iter().find(|e| &e["name"] == name))
            .map(|e| e[field].clone())
            .with_context(|| format!("kubeconfig: no {list} entry {name:?}"))
    };
    let context = named("contexts", &kc["current-context"], "context")?;
    let cluster = named("clusters", &context["cluster"], "cluster")?;
    let user = named("users", &context["user"], "user")?;
    let server = cluster["server"].as_str().context("no server")?;
    let host = server
        .strip_prefix("https://")
        .context("the API server is not https")?
        .trim_end_matches('/')
        .to_string();
    let decode = |from: &serde_yaml::Value, field: &str| -> anyhow::Result<Vec<u8>> {
        let data = from[field]
            .as_str()
            .with_context(|| format!("kubeconfig has no {field}"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data.trim())?)
    };
    let files = [
        ("ca.crt", decode(&cluster, "certificate-authority-data")?),
        ("client.crt", decode(&user, "client-certificate-data")?),
        ("client.key", decode(&user, "client-key-data")?),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes)?;
    }
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("client.crt"),
        dir.join("client.key"),
    );
    let job = |name: &str, port: &str, keep_namespace: Option<&str>, service: bool| {
        let mut lines = vec![
            format!("  - job_name: {name}"),
            "    scheme: https".to_string(),
            format!(
                "    tls_config: {{ca_file: '{}', cert_file: '{}', key_file: '{}'}}",
                ca.display(),
                cert.display(),
                key.display()
            ),
            "    kubernetes_sd_configs:".to_string(),
            format!(
                "      - {{role: pod, kubeconfig_file: '{}'}}",
                kubeconfig.display()
            ),
            "    relabel_configs:".to_string(),
            format!(
                "      - {{source_labels: [__meta_kubernetes_pod_container_port_name], regex: {port}, action: keep}}"
            ),
            "      - {source_labels: [__meta_kubernetes_pod_phase], regex: Running, action: keep}"
                .to_string(),
        ];
        if let Some(ns) = keep_namespace {
            lines.push(format!(
                "      - {{source_labels: [__meta_kubernetes_namespace], regex: {ns}, action: keep}}"
            ));
        }
        lines.extend([
            "      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}".to_string(),
            "      - {source_labels: [__meta_kubernetes_pod_name], target_label: instance}".to_string(),
            "      - source_labels: [__meta_kubernetes_namespace, __meta_kubernetes_pod_name, __meta_kubernetes_pod_container_port_number]".to_string(),
            "        regex: (.+);(.+);(.+)".to_string(),
            "        target_label: __metrics_path__".to_string(),
            "        replacement: /api/v1/namespaces/$1/pods/$2:$3/proxy/metrics".to_string(),
            format!("      - {{target_label: __address__, replacement: '{host}'}}"),
        ]);
        if service {
            lines.push(
                "      - {source_labels: [__meta_kubernetes_pod_label_mesh_trellis_dev_service], target_label: service}".to_string(),
            );
        }
        lines.join("\n") + "\n"
    };
    Ok(format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}{}",
        job("trellis-proxy", "trellis-admin", None, true),
        job(
            "trellis-operator",
            "metrics",
            Some(operator_namespace),
            false
        ),
    ))
}

pub struct Prometheus {
    pub addr: SocketAddr,
    http: reqwest::Client,
    _process: Process,
}

/// One query of a dashboard and how many series (or values) it returned.
pub struct Evaluated {
    pub what: String,
    pub expr: String,
    pub count: usize,
}

impl Prometheus {
    /// Starts `bin` with its data in `dir`, scraping `targets`; returns once it is ready.
    pub async fn start(bin: &Path, targets: &[Target], dir: &Path) -> anyhow::Result<Prometheus> {
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
             scrape_configs:\n  - job_name: trellis\n    static_configs:\n",
        );
        for t in targets {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            config.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{{}}}\n",
                t.addr,
                labels.join(", ")
            ));
        }
        Prometheus::start_with_config(bin, &config, dir).await
    }

    /// Starts `bin` with this configuration and its data in `dir`; returns once it is ready.
    pub async fn start_with_config(
        bin: &Path,
        config: &str,
        dir: &Path,
    ) -> anyhow::Result<Prometheus> {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let process = Process(
            Command::new(bin)
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        let http = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("Prometheus not ready in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Prometheus {
            addr,
            http,
            _process: process,
        })
    }

    /// An instant query's result vector.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let rsp: Value = self
            .http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        if rsp["status"] != "success" {
            bail!("{expr}: {rsp}");
        }
        Ok(rsp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The one value of a query that returns one series (0 when it returns none).
    pub async fn scalar(&self, expr: &str) -> anyhow::Result<f64> {
        Ok(self
            .query(expr)
            .await?
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }

    /// Every panel query and every `label_values` variable of `dashboard`,
    /// with the variables set to All, and what each returned.
    pub async fn evaluate(&self, dashboard: &Dashboard) -> anyhow::Result<Vec<Evaluated>> {
        let mut out = Vec::new();
        for (title, expr) in dashboard.queries() {
            let expr = expand_variables(&expr, RATE_WINDOW);
            let count = self.query(&expr).await?.len();
            out.push(Evaluated {
                what: title,
                expr,
                count,
            });
        }
        for var in ["namespace", "service"] {
            let Some(v) = dashboard.variable(var) else {
                continue;
            };
            let q = v["query"]["query"].as_str().context("variable query")?;
            let (selector, label) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(", "))
                .with_context(|| format!("{q} is not label_values(SELECTOR, LABEL)"))?;
            let rsp: Value = self
                .http
                .get(format!("http://{}/api/v1/label/{label}/values", self.addr))
                .query(&[("match[]", expand_variables(selector, RATE_WINDOW))])
                .send()
                .await?
                .json()
                .await?;
            out.push(Evaluated {
                what: format!("variable {var}"),
                expr: q.to_string(),
                count: rsp["data"].as_array().map_or(0, Vec::len),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_scraped_through_its_api_server_with_the_podmonitor_labels() {
        let dir = std::env::temp_dir().join(format!("trellis-prom-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: kind-obs\n\
             clusters: [{name: kind-obs, cluster: {server: 'https://127.0.0.1:41234', certificate-authority-data: Q0E=}}]\n\
             contexts: [{name: kind-obs, context: {cluster: kind-obs, user: kind-obs}}]\n\
             users: [{name: kind-obs, user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}}]\n",
        )
        .unwrap();
        let config = kubernetes_config(&kubeconfig, "trellis-system", &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), b"CA");
        assert_eq!(std::fs::read(dir.join("client.key")).unwrap(), b"KEY");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
        let jobs = parsed["scrape_configs"].as_sequence().unwrap();
        assert_eq!(jobs.len(), 2);
        let proxy = &jobs[0];
        assert_eq!(proxy["scheme"], "https");
        assert_eq!(
            proxy["kubernetes_sd_configs"][0]["kubeconfig_file"],
            kubeconfig.display().to_string()
        );
        let rules = proxy["relabel_configs"].as_sequence().unwrap();
        let rule = |target: &str| rules.iter().find(|r| r["target_label"] == target).unwrap();
        assert_eq!(rule("__address__")["replacement"], "127.0.0.1:41234");
        assert_eq!(
            rule("__metrics_path__")["replacement"],
            "/api/v1/namespaces/$1/pods/$2:$3/proxy/metrics"
        );
        assert_eq!(
            rule("service")["source_labels"][0],
            "__meta_kubernetes_pod_label_mesh_trellis_dev_service"
        );
        assert_eq!(
            rule("namespace")["source_labels"][0],
            "__meta_kubernetes_namespace"
        );
        assert_eq!(
            rule("instance")["source_labels"][0],
            "__meta_kubernetes_pod_name"
        );
        let operator = jobs[1]["relabel_configs"].as_sequence().unwrap();
        assert!(
            operator
                .iter()
                .any(|r| r["regex"] == "trellis-system" && r["action"] == "keep")
        );
        assert!(operator.iter().all(|r| r["target_label"] != "service"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
