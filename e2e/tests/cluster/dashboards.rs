//! The dashboards against the cluster: Debian's Prometheus on the host
//! scrapes the sidecars of one namespace and the operator through the API
//! server's pod proxy (the pods listed by the test into file-based
//! discovery: Debian builds Prometheus without Kubernetes discovery), with
//! the labels the chart's PodMonitor gives; then every panel query of every
//! dashboard, its variables substituted as Grafana would, is evaluated.
//! The shop test (`shop.rs`) puts the load on and calls it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use trellis_api::render::SERVICE_LABEL;
use trellis_e2e::cluster::{Cluster, OPERATOR_NAMESPACE, eventually, name};
use trellis_e2e::delivery::{Dashboard, substitute_variables};
use trellis_e2e::prometheus::{ClusterScrape, PodTarget, Prometheus, RATE_WINDOW};

/// 9 + 13 + 17 queries (e2e/tests/dashboards.rs checks their shape).
pub const PANEL_QUERIES: usize = 39;

/// Prometheus scraping the sidecars of `ns` and the operator's pods.
pub struct MeshScrape {
    pub prom: Prometheus,
    scrape: ClusterScrape,
    cluster: Cluster,
    ns: String,
    dir: PathBuf,
}

impl MeshScrape {
    /// Starts Prometheus on the pods running now.
    pub async fn start(cluster: &Cluster, bin: &std::path::Path, ns: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("trellis-cluster-prometheus-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let scrape = ClusterScrape::new(&cluster.kubeconfig, &dir)?;
        scrape.write_targets("trellis-proxy", &[])?;
        scrape.write_targets("trellis-operator", &[])?;
        let prom = Prometheus::start_with_config(bin, &scrape.config, &dir).await?;
        let me = MeshScrape {
            prom,
            scrape,
            cluster: cluster.clone(),
            ns: ns.to_string(),
            dir,
        };
        me.follow_pods().await?;
        Ok(me)
    }

    /// Points Prometheus at the pods running now (after a rollout) and
    /// waits until it has scraped each of them.
    pub async fn follow_pods(&self) -> anyhow::Result<usize> {
        let sidecars = port_targets(&self.cluster, &self.ns, "trellis-admin").await?;
        let operators = port_targets(&self.cluster, OPERATOR_NAMESPACE, "metrics").await?;
        if sidecars.is_empty() || operators.is_empty() {
            bail!(
                "{} sidecars in {}, {} operator pods",
                sidecars.len(),
                self.ns,
                operators.len()
            );
        }
        self.scrape.write_targets("trellis-proxy", &sidecars)?;
        self.scrape.write_targets("trellis-operator", &operators)?;
        let want: Vec<String> = sidecars
            .iter()
            .chain(&operators)
            .map(|p| p.pod.clone())
            .collect();
        let n = want.len();
        eventually(Duration::from_secs(60), || async {
            let up = self.prom.query("up == 1").await.ok()?;
            let scraped: Vec<&str> = up
                .iter()
                .filter_map(|s| s["metric"]["instance"].as_str())
                .collect();
            want.iter()
                .all(|p| scraped.contains(&p.as_str()))
                .then_some(())
        })
        .await
        .with_context(|| format!("Prometheus never scraped all of {want:?}"))?;
        Ok(n)
    }

    /// Every panel query of every dashboard with its variables chosen:
    /// namespace = the operator's for the operator dashboard, else `ns`;
    /// service = All on the overview, and on the per-service dashboard the
    /// first of `services` for which the query returns a series. One line
    /// per query (`dashboard / panel [variables]: N series`), and the
    /// queries that returned none.
    pub async fn panels(&self, services: &[&str]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut lines = Vec::new();
        let mut empty = Vec::new();
        for d in Dashboard::all()? {
            let (namespace, services): (&str, &[&str]) = if d.file == "operator.json" {
                (OPERATOR_NAMESPACE, &[""])
            } else if d.file == "mesh-overview.json" {
                (&self.ns, &[".+"])
            } else {
                (&self.ns, services)
            };
            let file = d.file.trim_end_matches(".json");
            for (title, expr) in d.queries() {
                let mut found = None;
                for service in services {
                    let q = substitute_variables(&expr, RATE_WINDOW, namespace, service);
                    let n = self.prom.query(&q).await?.len();
                    if n > 0 {
                        found = Some((*service, n));
                        break;
                    }
                }
                match found {
                    Some((service, n)) => {
                        let chosen = match service {
                            "" => format!("namespace={namespace}"),
                            ".+" => format!("namespace={namespace}, service=All"),
                            s => format!("namespace={namespace}, service={s}"),
                        };
                        lines.push(format!("{file} / {title} [{chosen}]: {n} series"));
                    }
                    None => {
                        lines.push(format!("{file} / {title}: 0 series"));
                        empty.push(format!("{file} / {title}: {expr}"));
                    }
                }
            }
        }
        Ok((lines, empty))
    }
}

impl Drop for MeshScrape {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The running pods of `namespace` with a container port named `port`, as
/// scrape targets (`service`: the pod's MeshService label).
async fn port_targets(
    cluster: &Cluster,
    namespace: &str,
    port: &str,
) -> anyhow::Result<Vec<PodTarget>> {
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut out = Vec::new();
    for p in pods.items {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let number = p
            .spec
            .iter()
            // The sidecar is a native sidecar: an init container.
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(port))
            .map(|cp| cp.container_port);
        let Some(number) = number else { continue };
        out.push(PodTarget {
            namespace: namespace.to_string(),
            pod: name(&p),
            port: u16::try_from(number)?,
            service: p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_LABEL).cloned()),
        });
    }
    Ok(out)
}
