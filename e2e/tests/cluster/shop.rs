//! The shop as users install it: `helm install` of charts/shop into the
//! cluster (RabbitMQ, PostgreSQL with a database per service, the six
//! MeshServices and their policies), an order placed through the gateway
//! and paid, `helm upgrade` of the payments fault knob taking effect, and
//! `helm uninstall` leaving nothing of the chart behind.
//!
//! The gateway is reached the way a user reaches it from a laptop:
//! `kubectl port-forward` to its Service, on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use trellis_api::render::SERVICE_LABEL;
use trellis_e2e::cluster::{
    Cluster, Mesh, eventually, exclusive, name, pod_ready, report, sidecar_status,
};
use trellis_e2e::delivery::{helm, object_id, shop_chart, trellis_chart, yaml_objects};

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

/// `kubectl port-forward` to the gateway's Service; killed on drop.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(cluster: &Cluster, ns: &str) -> anyhow::Result<PortForward> {
        let mut child = Command::new(kubectl_bin())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args([
                "-n",
                ns,
                "port-forward",
                "--address",
                "127.0.0.1",
                "service/gateway",
                "0:80",
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

/// A shop customer talking to the gateway.
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
    ) -> anyhow::Result<(u16, Value)> {
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
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, json))
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
                Ok((201 | 409, _)) => Some(()),
                Ok((status, body)) => {
                    eprintln!("registering: {status} {body}");
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
        let (status, login) = Self::send(
            &http,
            reqwest::Method::POST,
            &format!("{base}/api/auth/login"),
            None,
            Some(&json!({"email": email, "password": password})),
        )
        .await?;
        if status != 200 {
            bail!("login: {status} {login}");
        }
        let token = login["accessToken"]
            .as_str()
            .with_context(|| format!("no accessToken in {login}"))?
            .to_string();
        Ok(Customer { http, base, token })
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        Self::send(
            &self.http,
            reqwest::Method::GET,
            &url,
            Some(&self.token),
            None,
        )
        .await
    }

    /// Orders one of the first product; the gateway's answer (201 expected).
    async fn order(&self) -> anyhow::Result<Value> {
        let (status, products) = self.get("/api/products?limit=1").await?;
        if status != 200 {
            bail!("listing products: {status} {products}");
        }
        let product = products["data"][0]["id"]
            .as_str()
            .with_context(|| format!("no product in {products}"))?
            .to_string();
        let url = format!("{}/api/orders", self.base);
        let body = json!({"items": [{"productId": product, "quantity": 1}]});
        let (status, order) = Self::send(
            &self.http,
            reqwest::Method::POST,
            &url,
            Some(&self.token),
            Some(&body),
        )
        .await?;
        if status != 201 {
            bail!("placing an order: {status} {order}");
        }
        Ok(order)
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
}

/// Every shop pod Running, each MeshService's pods with a Ready sidecar,
/// and the chart's RabbitMQ and PostgreSQL ready.
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
    for infra in ["rabbitmq", "postgres"] {
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

#[tokio::test]
async fn helm_installs_the_shop_an_order_is_paid_the_fault_knob_upgrades_and_uninstall_cleans_up() {
    let _cluster = exclusive().await;
    let Some(cluster) = Cluster::attach("shop_chart_on_the_cluster").await else {
        return;
    };
    for chart in [trellis_chart(), shop_chart()] {
        let out = helm(&["lint", "--strict", chart.to_str().unwrap()]).unwrap();
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }

    let mesh = cluster.namespace("shop").await.unwrap();
    let ns = mesh.ns.clone();
    let chart = shop_chart();
    let chart = chart.to_str().unwrap();
    let installing = Instant::now();
    run_helm(&cluster, &["install", "shop", chart, "-n", &ns]).unwrap();
    let manifest = run_helm(&cluster, &["get", "manifest", "shop", "-n", &ns]).unwrap();
    let made: Vec<String> = yaml_objects(&manifest)
        .unwrap()
        .iter()
        .map(object_id)
        .collect();
    eprintln!("helm install shop made {} objects: {made:?}", made.len());
    if let Err(e) = wait_shop_ready(&mesh, INSTALL).await {
        let out = Command::new(kubectl_bin())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["-n", &ns, "get", "pods,meshservices", "-o", "wide"])
            .output()
            .unwrap();
        panic!("{e:#}\n{}", String::from_utf8_lossy(&out.stdout));
    }
    report(
        "shop install to all pods Ready (6 services, RabbitMQ, PostgreSQL)",
        installing.elapsed().as_secs_f64(),
        "s",
    );

    let forward = PortForward::start(&cluster, &ns).unwrap();
    let base = format!("http://127.0.0.1:{}", forward.port);
    let customer = Customer::sign_up(base, &format!("buyer@{ns}.example"))
        .await
        .unwrap();
    let ordering = Instant::now();
    let order = customer.order().await.unwrap();
    assert_eq!(order["payment"]["status"], "COMPLETED", "{order}");
    let id = order["id"].as_str().expect("order id").to_string();
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
    let refused = customer.order().await.unwrap();
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
    drop(forward);

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
