//! `operator-scale`: the operator at scale, against a real control plane.
//!
//! Runs the release `trellis-operator` as its own process (watching one
//! namespace, no webhooks, no leader election) and measures three things:
//!
//! 1. **convergence**: every MeshService and policy created at once; the
//!    time until every child object exists and every status is written and
//!    current;
//! 2. **a policy change**: one policy's spec is edited; which ConfigMaps and
//!    Deployments were rewritten (by resourceVersion), and the reconciles
//!    and writes it cost (from the operator's own metrics);
//! 3. **memory**: a fresh operator and namespace; MeshServices (and a policy
//!    for every fifth) are created 100 at a time; after each step has
//!    converged, the operator's RSS.
//!
//! Topology: `svc-i` calls `svc-(i-1)`, `svc-(i-10)` and `svc-(i-100)`
//! (those that exist), so a service has up to three callers; policy `j`
//! targets `svc-(5j)`. See bench/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::names::{MANAGED_BY, MANAGED_BY_LABEL};

#[derive(Parser, Debug)]
#[command(about = "The Trellis operator at scale: convergence, a policy change's fan-out, memory")]
struct Args {
    /// The release build of trellis-operator.
    #[arg(long, default_value = "target/release/trellis-operator")]
    operator_bin: PathBuf,
    /// MeshServices to create.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// ResiliencePolicies to create (one per target, every fifth service).
    #[arg(long, default_value_t = 200)]
    policies: usize,
    /// Services per memory step.
    #[arg(long, default_value_t = 100)]
    step: usize,
    /// Skip the memory steps.
    #[arg(long)]
    no_steps: bool,
    /// More flags for the operator (e.g. `--concurrency=8`), comma separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// How long a phase may take before the run gives up.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.policies * 5 > args.services {
        bail!("--policies may be at most a fifth of --services");
    }
    let client = Client::try_default()
        .await
        .context("no Kubernetes client (is KUBECONFIG set?)")?;
    trellis_e2e::install_crds(&client).await?;
    let mesh = Mesh {
        services: args.services,
        policies: args.policies,
    };
    let timeout = Duration::from_secs(args.timeout_secs);

    // Namespaces are deleted at the end: their garbage collection would
    // load the API server while the next phase is measured.
    let mut namespaces = Vec::new();
    let (ns, operator, watch) = convergence(&args, &client, &mesh, timeout).await?;
    namespaces.push(ns.clone());
    policy_change(&client, &mesh, &ns, &operator, &watch, timeout).await?;
    drop((operator, watch));
    if !args.no_steps {
        namespaces.push(memory_steps(&args, &client, &mesh, timeout).await?);
    }
    for ns in namespaces {
        delete_namespace(&client, &ns).await;
    }
    Ok(())
}

/// The objects of the benchmark.
struct Mesh {
    services: usize,
    policies: usize,
}

fn svc_name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn policy_name(j: usize) -> String {
    format!("pol-{j:03}")
}

impl Mesh {
    fn upstreams(&self, i: usize) -> Vec<usize> {
        [1, 10, 100]
            .iter()
            .filter_map(|d| i.checked_sub(*d))
            .collect()
    }

    /// Services among the first `n` that call `target`.
    fn callers(&self, target: usize, n: usize) -> BTreeSet<String> {
        [1, 10, 100]
            .iter()
            .map(|d| target + d)
            .filter(|c| *c < n)
            .map(svc_name)
            .collect()
    }

    fn replicas(&self, i: usize) -> i32 {
        // Every tenth service is replicated (and gets a PodDisruptionBudget).
        if i.is_multiple_of(10) { 2 } else { 1 }
    }

    fn service(&self, i: usize) -> anyhow::Result<MeshService> {
        let upstreams: Vec<String> = self.upstreams(i).into_iter().map(svc_name).collect();
        Ok(serde_json::from_value(json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1",
            "kind": "MeshService",
            "metadata": {"name": svc_name(i)},
            "spec": {
                "image": format!("registry.local/bench/{}:1", svc_name(i)),
                "replicas": self.replicas(i),
                "port": 8080,
                "upstreams": upstreams,
            },
        }))?)
    }

    fn policy(&self, j: usize, attempts: u32) -> anyhow::Result<ResiliencePolicy> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1",
            "kind": "ResiliencePolicy",
            "metadata": {"name": policy_name(j)},
            "spec": {
                "targetRef": {"kind": "MeshService", "name": svc_name(5 * j)},
                "timeout": {"request": "2s"},
                "retry": {"attempts": attempts, "perTryTimeout": "500ms", "retryOn": ["connect-failure", "503"]},
                "circuitBreaker": {"failureRateThreshold": 50, "minimumRequests": 20},
                "routes": [{"match": {"pathPrefix": "/api/v1/write", "methods": ["POST"]}, "retry": {"attempts": 1}}],
            },
        }))?)
    }

    /// Policies whose targets are among the first `n` services.
    fn policies_within(&self, n: usize) -> usize {
        self.policies.min(n.div_ceil(5))
    }
}

/// Creates services `from..to` and the policies that target them.
async fn create(
    client: &Client,
    ns: &str,
    mesh: &Mesh,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let services = Api::<MeshService>::namespaced(client.clone(), ns);
    let policies = Api::<ResiliencePolicy>::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    let mut creates = Vec::new();
    for i in from..to {
        let (services, pp, svc) = (services.clone(), pp.clone(), mesh.service(i)?);
        creates.push(futures::future::Either::Left(async move {
            services.create(&pp, &svc).await.map(|_| ())
        }));
    }
    for j in mesh.policies_within(from)..mesh.policies_within(to) {
        let (policies, pp, pol) = (policies.clone(), pp.clone(), mesh.policy(j, 2)?);
        creates.push(futures::future::Either::Right(async move {
            policies.create(&pp, &pol).await.map(|_| ())
        }));
    }
    futures::stream::iter(creates)
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating objects")?;
    Ok(())
}

/// What the API server has, kept current by watches.
struct Watch {
    services: Store<MeshService>,
    policies: Store<ResiliencePolicy>,
    deployments: Store<Deployment>,
    config_maps: Store<ConfigMap>,
    kube_services: Store<Service>,
    accounts: Store<ServiceAccount>,
    roles: Store<Role>,
    bindings: Store<RoleBinding>,
    budgets: Store<PodDisruptionBudget>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reflect<K>(
    client: &Client,
    ns: &str,
    owned: bool,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default();
    if owned {
        config = config.labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    }
    let stream = watcher(Api::<K>::namespaced(client.clone(), ns), config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tasks.push(tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    }));
    store
}

impl Watch {
    async fn start(client: &Client, ns: &str) -> anyhow::Result<Watch> {
        let mut tasks = Vec::new();
        let watch = Watch {
            services: reflect(client, ns, false, &mut tasks),
            policies: reflect(client, ns, false, &mut tasks),
            deployments: reflect(client, ns, true, &mut tasks),
            config_maps: reflect(client, ns, true, &mut tasks),
            kube_services: reflect(client, ns, true, &mut tasks),
            accounts: reflect(client, ns, true, &mut tasks),
            roles: reflect(client, ns, true, &mut tasks),
            bindings: reflect(client, ns, true, &mut tasks),
            budgets: reflect(client, ns, true, &mut tasks),
            tasks,
        };
        watch.services.wait_until_ready().await?;
        watch.policies.wait_until_ready().await?;
        watch.deployments.wait_until_ready().await?;
        watch.config_maps.wait_until_ready().await?;
        watch.kube_services.wait_until_ready().await?;
        watch.accounts.wait_until_ready().await?;
        watch.roles.wait_until_ready().await?;
        watch.bindings.wait_until_ready().await?;
        watch.budgets.wait_until_ready().await?;
        Ok(watch)
    }

    /// What is still missing for the first `n` services (and their
    /// policies) to count as converged; empty when they are.
    fn pending(&self, mesh: &Mesh, n: usize) -> Vec<String> {
        fn owners<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> BTreeSet<String> {
            store
                .state()
                .iter()
                .flat_map(|o| o.meta().owner_references.clone().unwrap_or_default())
                .map(|o| o.name)
                .collect()
        }
        let children = [
            ("ConfigMap", owners(&self.config_maps)),
            ("Service", owners(&self.kube_services)),
            ("ServiceAccount", owners(&self.accounts)),
            ("Role", owners(&self.roles)),
            ("RoleBinding", owners(&self.bindings)),
        ];
        let budgets = owners(&self.budgets);
        let deployments: BTreeMap<String, i32> = self
            .deployments
            .state()
            .iter()
            .map(|d| {
                let replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                (d.name_any(), replicas)
            })
            .collect();
        let services: BTreeMap<String, _> = self
            .services
            .state()
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();
        let mut pending = Vec::new();
        for i in 0..n {
            let name = svc_name(i);
            let Some(svc) = services.get(&name) else {
                pending.push(format!("{name}: not created"));
                continue;
            };
            for (kind, owned) in &children {
                if !owned.contains(&name) {
                    pending.push(format!("{name}: no {kind}"));
                }
            }
            if mesh.replicas(i) > 1 && !budgets.contains(&name) {
                pending.push(format!("{name}: no PodDisruptionBudget"));
            }
            let Some(replicas) = deployments.get(&name) else {
                pending.push(format!("{name}: no Deployment"));
                continue;
            };
            match &svc.status {
                Some(st)
                    if st.observed_generation == svc.metadata.generation
                        && st.conditions.len() == 4
                        && st.replicas == Some(*replicas) => {}
                _ => pending.push(format!("{name}: status not current")),
            }
        }
        let policies: BTreeMap<String, _> = self
            .policies
            .state()
            .into_iter()
            .map(|p| (p.name_any(), p))
            .collect();
        for j in 0..mesh.policies_within(n) {
            let name = policy_name(j);
            let Some(p) = policies.get(&name) else {
                pending.push(format!("{name}: not created"));
                continue;
            };
            let callers: Vec<String> = mesh.callers(5 * j, n).into_iter().collect();
            match &p.status {
                Some(st)
                    if st.observed_generation == p.metadata.generation
                        && st.applied_to == callers => {}
                _ => pending.push(format!("{name}: status not current")),
            }
        }
        pending
    }

    /// Waits until the first `n` services have converged.
    async fn converged(&self, mesh: &Mesh, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut progress = start;
        loop {
            let pending = self.pending(mesh, n);
            if pending.is_empty() {
                return Ok(());
            }
            if progress.elapsed() >= Duration::from_secs(10) {
                progress = Instant::now();
                eprintln!(
                    "{:>5.0} s: {} things pending, e.g. {:?}",
                    start.elapsed().as_secs_f64(),
                    pending.len(),
                    &pending[..pending.len().min(2)]
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "not converged after {timeout:?}: {} left, e.g. {:?}",
                    pending.len(),
                    &pending[..pending.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `name → resourceVersion` of the owned ConfigMaps and Deployments.
    fn versions(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        fn rv<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> BTreeMap<String, String> {
            store
                .state()
                .iter()
                .map(|o| {
                    let m = o.meta();
                    (
                        m.name.clone().unwrap_or_default(),
                        m.resource_version.clone().unwrap_or_default(),
                    )
                })
                .collect()
        }
        (rv(&self.config_maps), rv(&self.deployments))
    }
}

/// The operator under test, as its own process.
struct Operator {
    child: Child,
    metrics: SocketAddr,
}

impl Operator {
    fn start(args: &Args, ns: &str) -> anyhow::Result<Operator> {
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::env::temp_dir().join(format!("operator-scale-{ns}.log"));
        let child = Command::new(&args.operator_bin)
            .args(["--namespace", ns, "--operator-namespace", ns])
            .args(["--webhook", "false", "--leader-election", "false"])
            .arg("--metrics-bind")
            .arg(metrics.to_string())
            .args(&args.operator_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", args.operator_bin.display()))?;
        let op = Operator { child, metrics };
        let deadline = Instant::now() + Duration::from_secs(30);
        while op.scrape().is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the operator's /metrics never answered (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "operator pid {} watching {ns} (log {})",
            op.child.id(),
            log.display()
        );
        Ok(op)
    }

    /// Resident memory now, in KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// `/metrics` as `series → value` (`name{labels}` as printed).
    fn scrape(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: operator\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (_, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("trellis_operator_"))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// Waits until no reconcile has started for `quiet` and none runs.
    async fn settle(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let count = |m: &BTreeMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| {
                    k.starts_with("trellis_operator_reconcile_total")
                        || k.starts_with("trellis_operator_reconciles_in_flight")
                })
                .map(|(_, v)| v)
                .sum()
        };
        let mut last = count(&self.scrape()?);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let m = self.scrape()?;
            let busy = m
                .iter()
                .any(|(k, v)| k.starts_with("trellis_operator_reconciles_in_flight") && *v > 0.0);
            let now = count(&m);
            if now != last || busy {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the operator did not settle within {timeout:?}");
            }
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `after − before` for the series starting with `prefix`, non-zero only.
fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    prefix: &str,
) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    trellis_e2e::test_namespace(client, prefix).await
}

async fn delete_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::background())
        .await;
}

async fn memory_steps(
    args: &Args,
    client: &Client,
    mesh: &Mesh,
    timeout: Duration,
) -> anyhow::Result<String> {
    let ns = namespace(client, "scale-steps").await?;
    let operator = Operator::start(args, &ns)?;
    let watch = Watch::start(client, &ns).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = operator.rss_kib();
    println!(
        "## Operator memory, {} services in steps of {}\n",
        mesh.services, args.step
    );
    println!(
        "| services | policies | step converged in | RSS MiB | per 100 services since empty |"
    );
    println!("|---|---|---|---|---|");
    println!("| 0 | 0 | — | {:.1} | — |", idle as f64 / 1024.0);
    let mut n = 0;
    while n < mesh.services {
        let to = (n + args.step).min(mesh.services);
        let t = Instant::now();
        create(client, &ns, mesh, n, to).await?;
        watch.converged(mesh, to, timeout).await?;
        let took = t.elapsed();
        operator.settle(Duration::from_secs(2), timeout).await?;
        let rss = operator.rss_kib();
        println!(
            "| {to} | {} | {:.1} s | {:.1} | {:.2} MiB |",
            mesh.policies_within(to),
            took.as_secs_f64(),
            rss as f64 / 1024.0,
            (rss.saturating_sub(idle)) as f64 / 1024.0 / (to as f64 / 100.0)
        );
        n = to;
    }
    println!();
    Ok(ns)
}

async fn convergence(
    args: &Args,
    client: &Client,
    mesh: &Mesh,
    timeout: Duration,
) -> anyhow::Result<(String, Operator, Watch)> {
    let ns = namespace(client, "scale-bulk").await?;
    let operator = Operator::start(args, &ns)?;
    let watch = Watch::start(client, &ns).await?;
    let before = operator.scrape()?;
    let t = Instant::now();
    create(client, &ns, mesh, 0, mesh.services).await?;
    let created = t.elapsed();
    watch.converged(mesh, mesh.services, timeout).await?;
    let converged = t.elapsed();
    let after = operator.scrape()?;
    println!(
        "## Convergence: {} MeshServices and {} ResiliencePolicies created at once\n",
        mesh.services, mesh.policies
    );
    println!("- created in {:.1} s", created.as_secs_f64());
    println!(
        "- **every child applied and every status written and current after {:.1} s** (from the first create)",
        converged.as_secs_f64()
    );
    println!(
        "- operator RSS: {:.1} MiB",
        operator.rss_kib() as f64 / 1024.0
    );
    for (series, d) in delta(&before, &after, "trellis_operator_reconcile_total")
        .into_iter()
        .chain(delta(&before, &after, "trellis_operator_writes_total"))
        .chain(delta(
            &before,
            &after,
            "trellis_operator_reconcile_errors_total",
        ))
    {
        println!("- `{series}`: {d}");
    }
    println!();
    Ok((ns, operator, watch))
}

async fn policy_change(
    client: &Client,
    mesh: &Mesh,
    ns: &str,
    operator: &Operator,
    watch: &Watch,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Let the last status updates (the Deployments' own) pass first.
    operator.settle(Duration::from_secs(5), timeout).await?;
    let j = mesh.policies / 2;
    let target = 5 * j;
    let callers = mesh.callers(target, mesh.services);
    let (cms_before, deps_before) = watch.versions();
    let before = operator.scrape()?;
    let policies = Api::<ResiliencePolicy>::namespaced(client.clone(), ns);
    let changed = policies
        .patch(
            &policy_name(j),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retry": {"attempts": 3}}})),
        )
        .await?;
    let generation = changed.metadata.generation;
    let t = Instant::now();
    trellis_e2e::eventually(timeout, || async {
        let p = watch
            .policies
            .state()
            .into_iter()
            .find(|p| p.name_any() == policy_name(j))?;
        (p.status.as_ref()?.observed_generation == generation).then_some(())
    })
    .await
    .context("the changed policy's status")?;
    operator.settle(Duration::from_secs(5), timeout).await?;
    let after = operator.scrape()?;
    let (cms_after, deps_after) = watch.versions();
    let rewritten =
        |before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, suffix: &str| {
            after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k.trim_end_matches(suffix).to_string())
                .collect::<BTreeSet<_>>()
        };
    let cms = rewritten(&cms_before, &cms_after, "-proxy");
    let deps = rewritten(&deps_before, &deps_after, "");
    println!(
        "## A policy change: {} (target {}, callers {})\n",
        policy_name(j),
        svc_name(target),
        callers.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    println!(
        "- settled {:.1} s after the edit (5 s of quiet included)",
        t.elapsed().as_secs_f64()
    );
    println!(
        "- ConfigMaps rewritten: {} ({})",
        cms.len(),
        cms.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    println!(
        "- Deployments rewritten: {} ({})",
        deps.len(),
        deps.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    for (series, d) in delta(&before, &after, "trellis_operator_reconcile_total")
        .into_iter()
        .chain(delta(&before, &after, "trellis_operator_writes_total"))
    {
        println!("- `{series}`: {d}");
    }
    // A caller's Deployment changes only when its pods must restart (the
    // proxy reloads a policy change on its own), so it may stay as it was.
    let only_callers = cms == callers && deps.is_subset(&callers);
    println!(
        "- only the affected callers re-rendered: {}",
        if only_callers { "yes" } else { "NO" }
    );
    println!();
    Ok(())
}
