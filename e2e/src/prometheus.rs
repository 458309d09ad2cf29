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

/// A pod to scrape through the API server's pod proxy, and its labels.
pub struct PodTarget {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// The pod's MeshService (the `service` label), for sidecars.
    pub service: Option<String>,
}

/// Scraping a cluster reached only through its API server (`kubeconfig`'s
/// current context), so the host needs no route to the pod network: each
/// pod is scraped at `/api/v1/namespaces/NS/pods/POD:PORT/proxy/metrics`
/// with the kubeconfig's client certificate (written into `dir`). Debian's
/// Prometheus has no Kubernetes discovery, so the pods come from
/// `file_sd_configs`: one file per job in `dir`, written by
/// [`ClusterScrape::write_targets`].
pub struct ClusterScrape {
    /// The Prometheus configuration.
    pub config: String,
    host: String,
    dir: PathBuf,
}

impl ClusterScrape {
    /// The configuration of jobs `trellis-proxy` and `trellis-operator`.
    pub fn new(kubeconfig: &Path, dir: &Path) -> anyhow::Result<ClusterScrape> {
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
        for (name, bytes) in [
            ("ca.crt", decode(&cluster, "certificate-authority-data")?),
            ("client.crt", decode(&user, "client-certificate-data")?),
            ("client.key", decode(&user, "client-key-data")?),
        ] {
            std::fs::write(dir.join(name), bytes)?;
        }
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n",
        );
        for job in ["trellis-proxy", "trellis-operator"] {
            config.push_str(&format!(
                "  - job_name: {job}\n    scheme: https\n    tls_config: {{ca_file: '{}', cert_file: '{}', key_file: '{}'}}\n    file_sd_configs:\n      - {{files: ['{}'], refresh_interval: 1s}}\n",
                dir.join("ca.crt").display(),
                dir.join("client.crt").display(),
                dir.join("client.key").display(),
                dir.join(format!("{job}.json")).display(),
            ));
        }
        Ok(ClusterScrape {
            config,
            host,
            dir: dir.to_path_buf(),
        })
    }

    /// The target groups of one job: the API server as the address, the
    /// pod's proxy path, and the labels the chart's monitors give
    /// (`namespace`, `service`; `instance` is the pod).
    pub fn targets(&self, pods: &[PodTarget]) -> Value {
        Value::Array(
            pods.iter()
                .map(|p| {
                    let mut labels = serde_json::json!({
                        "__metrics_path__": format!(
                            "/api/v1/namespaces/{}/pods/{}:{}/proxy/metrics",
                            p.namespace, p.pod, p.port
                        ),
                        "namespace": p.namespace,
                        "instance": p.pod,
                    });
                    if let Some(service) = &p.service {
                        labels["service"] = Value::String(service.clone());
                    }
                    serde_json::json!({"targets": [self.host], "labels": labels})
                })
                .collect(),
        )
    }

    /// Writes the targets of `job` (`trellis-proxy` or `trellis-operator`).
    pub fn write_targets(&self, job: &str, pods: &[PodTarget]) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{job}.json"));
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.targets(pods))?)?;
        std::fs::rename(tmp, file)?;
        Ok(())
    }
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
        let scrape = ClusterScrape::new(&kubeconfig, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), b"CA");
        assert_eq!(std::fs::read(dir.join("client.key")).unwrap(), b"KEY");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&scrape.config).unwrap();
        let jobs = parsed["scrape_configs"].as_sequence().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0]["scheme"], "https");
        assert_eq!(
            jobs[1]["file_sd_configs"][0]["files"][0],
            dir.join("trellis-operator.json").display().to_string()
        );
        let targets = scrape.targets(&[PodTarget {
            namespace: "shop".into(),
            pod: "orders-7d9".into(),
            port: 9901,
            service: Some("orders".into()),
        }]);
        assert_eq!(
            targets,
            serde_json::json!([{"targets": ["127.0.0.1:41234"], "labels": {
                "__metrics_path__": "/api/v1/namespaces/shop/pods/orders-7d9:9901/proxy/metrics",
                "namespace": "shop", "instance": "orders-7d9", "service": "orders"}}])
        );
        scrape.write_targets("trellis-proxy", &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("trellis-proxy.json")).unwrap(),
            "[]"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
