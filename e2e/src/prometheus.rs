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
