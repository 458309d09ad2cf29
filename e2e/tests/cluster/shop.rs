//! The shop as users install it, watched as users watch it: `helm install`
//! of charts/shop (RabbitMQ, PostgreSQL with a database per service, the six
//! MeshServices and their policies, its Jaeger) into the namespace the
//! sidecars export their spans to; an order placed through the gateway and
//! paid, its trace read back from that Jaeger; Prometheus scraping the
//! sidecars and the operator while shoppers load the gateway, then while
//! `helm upgrade` of the payments fault knob makes every payment fail, and
//! every dashboard panel's query answering with series; `helm uninstall`
//! leaving nothing of the chart behind.
//!
//! The gateway and Jaeger are reached the way a user reaches them from a
//! laptop: `kubectl port-forward` to their Services, on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use trellis_api::crd::MeshService;
use trellis_api::render::SERVICE_LABEL;
use trellis_e2e::cluster::{
    Cluster, Mesh, OPERATOR_NAMESPACE, app_service, eventually, exclusive, name, pod_ready, report,
    report_text, sidecar_status,
};
use trellis_e2e::delivery::{SHOP, helm, object_id, shop_chart, trellis_chart, yaml_objects};
use trellis_e2e::jaeger::Trace;
use trellis_e2e::prometheus;

use crate::dashboards::{MeshScrape, PANEL_QUERIES};

/// The MeshServices of examples/shop and their default replicas.
const SERVICES: [(&str, usize); 6] = [
    ("gateway", 2),
    ("users", 2),
    ("products", 2),
    ("orders", 1),
    ("payments", 1),
    ("notifications", 1),
];
/// A first install pulls nothing (the images are loaded), but PostgreSQL
/// initialises and every service runs its migrations.
const INSTALL: Duration = Duration::from_secs(420);

fn kubectl_bin() -> String {
    std::env::var("TRELLIS_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

fn run_helm(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = cluster.kubeconfig.to_str().context("kubeconfig path")?;
    let mut all = vec!["--kubeconfig", kubeconfig];
    all.extend(args);
    helm(&all)
}

/// `kubectl port-forward` to a Service's port; killed on drop.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    /// Forwards a free port of 127.0.0.1 to `service`'s `port`.
    fn start(cluster: &Cluster, ns: &str, service: &str, port: u16) -> anyhow::Result<PortForward> {
        let mut child = Command::new(kubectl_bin())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args([
                "-n",
                ns,
                "port-forward",
                "--address",
                "127.0.0.1",
                &format!("service/{service}"),
                &format!("0:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:40123 -> 4143"
        let port = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("kubectl port-forward exited before forwarding");
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port = rest.split_whitespace().next().unwrap_or_default();
                break port.parse().with_context(|| format!("port in {line:?}"))?;
            }
        };
        // Keep reading (and dropping) what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(PortForward { child, port })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway's answer: status, JSON body, and the trace it started.
struct Answer {
    status: u16,
    body: Value,
    trace_id: String,
}

/// A shop customer talking to the gateway.
#[derive(Clone)]
struct Customer {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Customer {
    async fn send(
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut req = http.request(method.clone(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let trace_id = resp
            .headers()
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            body,
            trace_id,
        })
    }

    /// Registers and logs in; retried while the shop's services find each other.
    async fn sign_up(base: String, email: &str) -> anyhow::Result<Customer> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let password = "correct horse battery staple";
        let account = json!({"email": email, "password": password, "name": "E2E Buyer"});
        let registered = eventually(Duration::from_secs(90), || async {
            match Self::send(
                &http,
                reqwest::Method::POST,
                &format!("{base}/api/users"),
                None,
                Some(&account),
            )
            .await
            {
                Ok(Answer {
                    status: 201 | 409, ..
                }) => Some(()),
                Ok(a) => {
                    eprintln!("registering: {} {}", a.status, a.body);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
                Err(e) => {
                    eprintln!("registering: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
            }
        })
        .await;
        registered.context("the gateway never registered the customer")?;
        let login = Self::send(
            &http,
            reqwest::Method::POST,
            &format!("{base}/api/auth/login"),
            None,
            Some(&json!({"email": email, "password": password})),
        )
        .await?;
        if login.status != 200 {
            bail!("login: {} {}", login.status, login.body);
        }
        let token = login.body["accessToken"]
            .as_str()
            .with_context(|| format!("no accessToken in {}", login.body))?
            .to_string();
        Ok(Customer { http, base, token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        Self::send(&self.http, method, &url, Some(&self.token), body).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let a = self.call(reqwest::Method::GET, path, None).await?;
        Ok((a.status, a.body))
    }

    /// Orders one of the `nth` of the first 50 products (in turn, so no
    /// stock runs out); the gateway's answer (201 expected) and the id of
    /// the trace it started.
    async fn order(&self, nth: usize) -> anyhow::Result<(Value, String)> {
        let (status, products) = self.get("/api/products?limit=50").await?;
        if status != 200 {
            bail!("listing products: {status} {products}");
        }
        let listed = products["data"].as_array().map_or(0, Vec::len).max(1);
        let product = products["data"][nth % listed]["id"]
            .as_str()
            .with_context(|| format!("no product in {products}"))?
            .to_string();
        let body = json!({"items": [{"productId": product, "quantity": 1}]});
        let placed = self
            .call(reqwest::Method::POST, "/api/orders", Some(&body))
            .await?;
        if placed.status != 201 {
            bail!("placing an order: {} {}", placed.status, placed.body);
        }
        Ok((placed.body, placed.trace_id))
    }

    /// The order once its status is `want`.
    async fn order_reaches(&self, id: &str, want: &str, within: Duration) -> anyhow::Result<Value> {
        let path = format!("/api/orders/{id}");
        let deadline = Instant::now() + within;
        loop {
            let (status, order) = self.get(&path).await?;
            if status == 200 && order["status"] == want {
                return Ok(order);
            }
            if Instant::now() >= deadline {
                bail!("order {id} never {want}; last seen {status} {order}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `workers` shoppers for `time`, each in a loop: list products and
    /// order one, read the order, a payment (`payment`, an earlier order's) and
    /// the notifications. Answers by request and status.
    async fn shop_for(
        &self,
        workers: usize,
        time: Duration,
        payment: &str,
    ) -> BTreeMap<String, u64> {
        let until = Instant::now() + time;
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let me = self.clone();
            let payment = payment.to_string();
            let mut nth = tasks.len();
            tasks.push(tokio::spawn(async move {
                let mut seen = BTreeMap::new();
                let mut count = |what: &str, r: Result<u16, ()>| {
                    let key = match r {
                        Ok(status) => format!("{what} {status}"),
                        Err(()) => format!("{what} failed (no answer, or not 201 for an order)"),
                    };
                    *seen.entry(key).or_insert(0u64) += 1;
                };
                let status = |r: anyhow::Result<Answer>| r.map(|a| a.status).map_err(|_| ());
                while Instant::now() < until {
                    use reqwest::Method;
                    let placed = me.order(nth).await;
                    nth += workers;
                    count(
                        "POST /api/orders",
                        if placed.is_ok() { Ok(201) } else { Err(()) },
                    );
                    let order = placed.as_ref().ok().and_then(|(o, _)| o["id"].as_str());
                    if let Some(id) = order {
                        let path = format!("/api/orders/{id}");
                        count(
                            "GET /api/orders/{id}",
                            status(me.call(Method::GET, &path, None).await),
                        );
                    }
                    let path = format!("/api/payments/{payment}");
                    count(
                        "GET /api/payments/{id}",
                        status(me.call(Method::GET, &path, None).await),
                    );
                    count(
                        "GET /api/notifications",
                        status(me.call(Method::GET, "/api/notifications", None).await),
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                seen
            }));
        }
        let mut all = BTreeMap::new();
        for t in tasks {
            if let Ok(seen) = t.await {
                for (k, n) in seen {
                    *all.entry(k).or_insert(0) += n;
                }
            }
        }
        all
    }
}

/// Every shop pod Running, each MeshService's pods with a Ready sidecar,
/// and the chart's RabbitMQ, PostgreSQL and Jaeger ready.
async fn wait_shop_ready(mesh: &Mesh, within: Duration) -> anyhow::Result<()> {
    for (service, replicas) in SERVICES {
        let pods = mesh.wait_ready(service, replicas, within).await?;
        for pod in &pods {
            let sidecar =
                sidecar_status(pod).with_context(|| format!("{} has no sidecar", name(pod)))?;
            if !sidecar.ready {
                bail!("{}: sidecar not ready", name(pod));
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(mesh.client.clone(), &mesh.ns);
    for infra in ["rabbitmq", "postgres", "jaeger"] {
        let selector = format!("app.kubernetes.io/name={infra}");
        eventually(within, || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            (list.items.len() == 1 && list.items.iter().all(pod_ready)).then_some(())
        })
        .await
        .with_context(|| format!("{infra} not ready"))?;
    }
    let all = pods.list(&ListParams::default()).await?;
    for pod in &all.items {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase != "Running" {
            bail!("pod {} is {phase}", name(pod));
        }
    }
    Ok(())
}

/// The value of env `var` in the payments Deployment's app container.
async fn payments_env(mesh: &Mesh, var: &str) -> Option<String> {
    let deploys: Api<Deployment> = Api::namespaced(mesh.client.clone(), &mesh.ns);
    let deploy = deploys.get("payments").await.ok()?;
    let pod = deploy.spec?.template.spec?;
    let app = pod.containers.iter().find(|c| c.name == "payments")?;
    app.env
        .as_ref()?
        .iter()
        .find(|e| e.name == var)?
        .value
        .clone()
}

/// The objects of `ids` (`Kind/name`, in the release's namespace) that still exist.
fn left_behind(cluster: &Cluster, ns: &str, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    for id in ids {
        let out = Command::new(kubectl_bin())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["-n", ns, "get", id, "--ignore-not-found", "-o", "name"])
            .output()?;
        if !out.status.success() {
            bail!("kubectl get {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            left.push(id.clone());
        }
    }
    Ok(left)
}

/// The namespace whose `jaeger` Service the sidecars export their spans to:
/// the operator's `TRELLIS_PROXY_OTLP_ENDPOINT` (the trellis chart's
/// `proxy.otlpEndpoint`; e2e/kind.sh sets `http://jaeger.shop:4317`).
async fn traced_namespace(cluster: &Cluster) -> anyhow::Result<String> {
    let deploys: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    let operator = deploys.get("trellis-operator").await?;
    let endpoint = operator
        .spec
        .and_then(|s| s.template.spec)
        .into_iter()
        .flat_map(|p| p.containers)
        .flat_map(|c| c.env.unwrap_or_default())
        .find(|e| e.name == "TRELLIS_PROXY_OTLP_ENDPOINT")
        .and_then(|e| e.value)
        .unwrap_or_default();
    // http://jaeger.NAMESPACE[.svc[.cluster.local]]:4317
    let host = endpoint
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix(":4317"))
        .unwrap_or_default();
    match host.split('.').collect::<Vec<_>>().as_slice() {
        ["jaeger", ns, rest @ ..] if rest.is_empty() || rest[0] == "svc" => Ok(ns.to_string()),
        _ => bail!(
            "the sidecars export spans to {endpoint:?}, not to the shop chart's Jaeger \
             (http://jaeger.NAMESPACE:4317): install the trellis chart with \
             proxy.otlpEndpoint=http://jaeger.shop:4317, as e2e/kind.sh does"
        ),
    }
}

/// The objects of a release's manifest, one `Kind/name` a line.
fn release_objects(cluster: &Cluster, release: &str, ns: &str) -> anyhow::Result<Vec<String>> {
    let manifest = run_helm(cluster, &["get", "manifest", release, "-n", ns])?;
    Ok(yaml_objects(&manifest)?.iter().map(object_id).collect())
}

/// Sums of the sidecars' resilience counters for calls to payments.
async fn payments_resilience(
    prom: &prometheus::Prometheus,
    ns: &str,
) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (what, metric) in [
        ("retries", "trellis_retries_total"),
        (
            "retry budget exhausted",
            "trellis_retry_budget_exhausted_total",
        ),
        ("circuit opened", "trellis_circuit_transitions_total"),
        ("fallbacks served", "trellis_fallback_responses_total"),
    ] {
        let to = if what == "circuit opened" {
            ", to=\"open\""
        } else {
            ""
        };
        let q = format!("sum({metric}{{namespace=\"{ns}\", peer=\"payments\"{to}}})");
        out.insert(what, prom.scalar(&q).await.unwrap_or(0.0));
    }
    out
}

#[tokio::test]
async fn helm_installs_the_shop_an_order_is_paid_and_traced_the_dashboards_see_it_under_load_the_fault_knob_upgrades_and_uninstall_cleans_up()
 {
    let _cluster = exclusive().await;
    let Some(cluster) = Cluster::attach("shop_chart_on_the_cluster").await else {
        return;
    };
    let Some(prometheus_bin) = prometheus::binary() else {
        return;
    };
    for chart in [trellis_chart(), shop_chart()] {
        let out = helm(&["lint", "--strict", chart.to_str().unwrap()]).unwrap();
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    report_text(
        "objects of the trellis release (helm get manifest)",
        &release_objects(&cluster, "trellis", OPERATOR_NAMESPACE)
            .unwrap()
            .join("\n"),
    );

    // Where the sidecars send spans is fixed when Trellis is installed: the
    // shop and its Jaeger go to that namespace.
    let ns = traced_namespace(&cluster).await.unwrap();
    let mesh = cluster.fixed_namespace(&ns).await.unwrap();
    let chart = shop_chart();
    let chart = chart.to_str().unwrap();
    let installing = Instant::now();
    run_helm(
        &cluster,
        &[
            "install",
            "shop",
            chart,
            "-n",
            &ns,
            "--set",
            "jaeger.enabled=true",
        ],
    )
    .unwrap();
    let made = release_objects(&cluster, "shop", &ns).unwrap();
    report_text(
        "objects of the shop release (helm get manifest)",
        &made.join("\n"),
    );
    if let Err(e) = wait_shop_ready(&mesh, INSTALL).await {
        let out = Command::new(kubectl_bin())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["-n", &ns, "get", "pods,meshservices", "-o", "wide"])
            .output()
            .unwrap();
        panic!("{e:#}\n{}", String::from_utf8_lossy(&out.stdout));
    }
    report(
        "shop install to all pods Ready (6 services, RabbitMQ, PostgreSQL, Jaeger)",
        installing.elapsed().as_secs_f64(),
        "s",
    );

    let forward = PortForward::start(&cluster, &ns, "gateway", 80).unwrap();
    let base = format!("http://127.0.0.1:{}", forward.port);
    let customer = Customer::sign_up(base, &format!("buyer@{ns}.example"))
        .await
        .unwrap();
    let ordering = Instant::now();
    let (order, trace_id) = customer.order(0).await.unwrap();
    let answered = Instant::now();
    assert_eq!(order["payment"]["status"], "COMPLETED", "{order}");
    assert_eq!(trace_id.len(), 32, "no x-trace-id from the gateway");
    let id = order["id"].as_str().expect("order id").to_string();
    let payment = order["payment"]["paymentId"]
        .as_str()
        .expect("payment id")
        .to_string();
    // Payment is recorded through RabbitMQ (PaymentProcessed -> orders).
    let paid = customer
        .order_reaches(&id, "PAID", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(paid["paymentId"], order["payment"]["paymentId"], "{paid}");
    report(
        "order through the gateway, placed to PAID",
        ordering.elapsed().as_secs_f64(),
        "s",
    );

    // The order's trace, from the Jaeger in the cluster.
    let jaeger = PortForward::start(&cluster, &ns, "jaeger", 16686).unwrap();
    let trace = Trace::wait_for(
        &format!("http://127.0.0.1:{}", jaeger.port),
        &trace_id,
        Duration::from_secs(60),
        Trace::shop_order_problems,
    )
    .await
    .expect("the order's trace in the cluster's Jaeger");
    report(
        "order's trace complete in the cluster's Jaeger, after the gateway answered",
        answered.elapsed().as_secs_f64(),
        "s",
    );
    report_text(
        &format!("span tree of order {id}'s trace {trace_id} (Jaeger in the cluster)"),
        &trace.tree(),
    );
    drop(jaeger);

    // Dashboards under load: Prometheus scrapes the shop's sidecars and the
    // operator while shoppers go through the gateway, healthy first.
    let dashboards = Instant::now();
    let scrape = MeshScrape::start(&cluster, &prometheus_bin, &ns)
        .await
        .unwrap();
    // The API server refuses its Deployment: the operator's error series.
    let mut refused = app_service("echo", 1, &[], json!([]));
    refused["resources"] = json!({"requests": {"cpu": "-1"}});
    mesh.apply_service("refused", refused).await.unwrap();
    let healthy = customer
        .shop_for(2, Duration::from_secs(10), &payment)
        .await;
    eprintln!("shoppers, healthy: {healthy:?}");
    assert!(
        healthy.get("POST /api/orders 201").is_some_and(|n| *n > 0),
        "{healthy:?}"
    );

    // The fault knob: every payment request fails, so a new order is not paid.
    let upgrading = Instant::now();
    run_helm(
        &cluster,
        &[
            "upgrade",
            "shop",
            chart,
            "-n",
            &ns,
            "--reuse-values",
            "--set",
            "payments.failureRate=1",
        ],
    )
    .unwrap();
    eventually(Duration::from_secs(60), || async {
        (payments_env(&mesh, "PAYMENTS_FAILURE_RATE")
            .await
            .as_deref()
            == Some("1"))
        .then_some(())
    })
    .await
    .expect("the operator never rendered PAYMENTS_FAILURE_RATE=1 into payments");
    // The new payments pod (and only it) serves.
    let pods: Api<Pod> = Api::namespaced(mesh.client.clone(), &ns);
    eventually(INSTALL, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("{SERVICE_LABEL}=payments")))
            .await
            .ok()?;
        let all_new = list.items.iter().all(|p| {
            let app = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == "payments"));
            app.and_then(|c| c.env.as_ref())
                .and_then(|env| env.iter().find(|e| e.name == "PAYMENTS_FAILURE_RATE"))
                .and_then(|e| e.value.as_deref())
                == Some("1")
        });
        (list.items.len() == 1 && all_new && list.items.iter().all(pod_ready)).then_some(())
    })
    .await
    .expect("payments never rolled to the new fault rate");
    report(
        "helm upgrade payments.failureRate to the new pod Ready",
        upgrading.elapsed().as_secs_f64(),
        "s",
    );
    let (refused, _) = customer.order(1).await.unwrap();
    assert_eq!(refused["payment"]["status"], "FAILED", "{refused}");
    let refused_id = refused["id"].as_str().expect("order id");
    let (status, unpaid) = customer
        .get(&format!("/api/orders/{refused_id}"))
        .await
        .unwrap();
    assert_eq!(
        (status, &unpaid["status"]),
        (200, &json!("CREATED")),
        "{unpaid}"
    );

    // Shoppers while payments fails: the callers' retries, budget, breaker
    // and fallback for payments go to work.
    scrape.follow_pods().await.unwrap();
    let before = payments_resilience(&scrape.prom, &ns).await;
    let faulty = customer
        .shop_for(2, Duration::from_secs(15), &payment)
        .await;
    eprintln!("shoppers, payments failing: {faulty:?}");
    // Two more scrapes after the load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = payments_resilience(&scrape.prom, &ns).await;
    let moved: Vec<String> = after
        .iter()
        .map(|(what, n)| format!("{what}: {} → {n}", before[what]))
        .collect();
    report_text(
        "callers' resilience counters for payments, before → after the fault phase",
        &moved.join("\n"),
    );
    for what in ["retries", "circuit opened", "fallbacks served"] {
        assert!(
            after[what] > before[what],
            "no {what} for payments while it failed: {moved:?}"
        );
    }

    let (lines, empty) = scrape.panels(&SHOP).await.unwrap();
    report_text(
        "dashboard / panel [variables]: series, under shop load",
        &lines.join("\n"),
    );
    report(
        "dashboard queries with series",
        (lines.len() - empty.len()) as f64,
        "queries",
    );
    assert!(lines.len() >= PANEL_QUERIES, "only {} queries", lines.len());
    assert!(
        empty.is_empty(),
        "queries without a series:\n{}",
        empty.join("\n")
    );
    report(
        "dashboards under shop load (Prometheus up, two load phases, fault upgrade, every query)",
        dashboards.elapsed().as_secs_f64(),
        "s",
    );
    drop(scrape);
    drop(forward);
    Api::<MeshService>::namespaced(mesh.client.clone(), &ns)
        .delete("refused", &DeleteParams::default())
        .await
        .unwrap();

    // Uninstall: nothing the chart made is left, nor the pods the operator ran for it.
    let uninstalling = Instant::now();
    run_helm(&cluster, &["uninstall", "shop", "-n", &ns, "--wait"]).unwrap();
    let left = left_behind(&cluster, &ns, &made).unwrap();
    assert!(left.is_empty(), "helm uninstall left {left:?}");
    eventually(Duration::from_secs(120), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await
    .expect("the shop's pods outlived its release");
    report(
        "helm uninstall shop to no pods left",
        uninstalling.elapsed().as_secs_f64(),
        "s",
    );
    mesh.cleanup().await;
}
