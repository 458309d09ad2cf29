//! Every panel query of the mesh dashboards, evaluated by a real Prometheus
//! (Debian's `prometheus`) that scrapes real `trellis-proxy` processes while
//! they carry load on 127.0.0.1, must return at least one series.
//!
//! The mesh: a caller `web` whose sidecar calls `flaky` (two endpoints, one
//! failing: retries, ejection), `down` (always 503: retry budget, breaker,
//! fallback) and `slow` (a bulkhead of one); each service's app is the e2e
//! echo server behind its own sidecar, and each sidecar is scraped with the
//! `namespace` and `service` labels the chart's PodMonitor gives in a cluster.
//! The processes come from `trellis_e2e::local`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;
use trellis_api::crd::ResiliencePolicy;
use trellis_api::parse::from_yaml;
use trellis_e2e::delivery::{Dashboard, expand_variables};
use trellis_e2e::local::{NAMESPACE, Process, Sidecar, free_port, start_echo, start_sidecar};
use trellis_e2e_app::api::{FAULT_PATH, Fault};
/// Scrapes every second; rates over this window see several samples.
const RATE_WINDOW: &str = "20s";

const POLICIES: &str = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: flaky, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: flaky}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 5ms, jitter: full}
    retryOn: ["503"]
    budget: {ratio: 0.5, minPerSecond: 50, window: 10s}
  outlierDetection: {consecutiveFailures: 3, baseEjection: 30s, maxEjectionPercent: 50}
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: down, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: down}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 5ms, jitter: full}
    retryOn: ["503"]
    budget: {ratio: 0.1, minPerSecond: 1, window: 10s}
  circuitBreaker:
    failureRateThreshold: 50
    minimumRequests: 5
    window: 10s
    consecutiveFailures: 5
    openDuration: 1s
    maxOpenDuration: 2s
    halfOpenRequests: 1
  fallback: {status: 503, body: '{"error":"down unavailable"}', contentType: application/json}
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: slow, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: slow}
  bulkhead: {maxConcurrent: 1, maxQueued: 0, queueTimeout: 10ms}
  inbound: {rateLimit: {requestsPerSecond: 1000, burst: 1000}}
"#;

/// Debian's Prometheus, or `None` (after saying so) outside CI.
fn prometheus_binary() -> Option<PathBuf> {
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

fn prometheus_config(sidecars: &[Sidecar]) -> String {
    let mut targets = String::new();
    for s in sidecars {
        targets.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{namespace: {NAMESPACE}, service: {}}}\n",
            s.admin, s.service
        ));
    }
    format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n  - job_name: trellis-proxy\n    static_configs:\n{targets}"
    )
}

/// Calls through `via` (a sidecar's outbound, as the app's HTTP proxy) for
/// `duration`, `concurrency` calls at a time.
async fn load(via: SocketAddr, url: &'static str, concurrency: usize, duration: Duration) -> u64 {
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{via}")).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Any answer counts; errors are what the dashboards show.
                let _ = client.get(url).send().await.map(|r| r.status());
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    total
}

async fn query(client: &reqwest::Client, prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let rsp: Value = client
        .get(format!("http://{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rsp["status"], "success", "{expr}: {rsp}");
    rsp["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mesh_panel_query_returns_series_from_real_sidecars() {
    let Some(prometheus_bin) = prometheus_binary() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("trellis-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policies: Vec<ResiliencePolicy> = POLICIES
        .split("\n---")
        .map(|doc| from_yaml(doc).unwrap())
        .collect();

    // The callees, each app behind its own sidecar.
    let (flaky_ok, _) = start_echo("flaky-ok").await;
    let (flaky_bad, flaky_bad_state) = start_echo("flaky-bad").await;
    let (down, down_state) = start_echo("down").await;
    let (slow, _) = start_echo("slow").await;
    let (web, _) = start_echo("web").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for (app, state) in [(flaky_bad, &flaky_bad_state), (down, &down_state)] {
        let rsp = http
            .post(format!("http://{app}{FAULT_PATH}"))
            .json(&Fault::failing(503))
            .send()
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "{}: fault not set", state.pod);
    }
    let sidecars = vec![
        start_sidecar("flaky", flaky_ok, &[], &policies, None, &dir),
        start_sidecar("flaky", flaky_bad, &[], &policies, None, &dir),
        start_sidecar("down", down, &[], &policies, None, &dir),
        start_sidecar("slow", slow, &[], &policies, None, &dir),
    ];
    let upstreams = vec![
        ("flaky", vec![sidecars[0].inbound, sidecars[1].inbound]),
        ("down", vec![sidecars[2].inbound]),
        ("slow", vec![sidecars[3].inbound]),
    ];
    let mut sidecars = sidecars;
    sidecars.push(start_sidecar("web", web, &upstreams, &policies, None, &dir));
    let caller = sidecars.last().unwrap().outbound;
    let web_inbound = sidecars.last().unwrap().inbound;

    let prom_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(dir.join("prometheus.yml"), prometheus_config(&sidecars)).unwrap();
    let _prometheus = Process(
        Command::new(&prometheus_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{prom_addr}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Load on every path at once, for long enough to give rates several samples.
    let run = Duration::from_secs(15);
    let (flaky_n, down_n, slow_n, web_n) = tokio::join!(
        load(caller, "http://flaky/api", 4, run),
        load(caller, "http://down/api", 2, run),
        load(caller, "http://slow/api?sleepMs=100", 4, run),
        async {
            // Straight into web's inbound, as its Service would send it.
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            let deadline = Instant::now() + run;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let _ = c.get(format!("http://{web_inbound}/api")).send().await;
                n += 1;
            }
            n
        }
    );
    eprintln!("load: flaky {flaky_n}, down {down_n}, slow {slow_n}, web inbound {web_n} requests");
    // Two more scrapes after the load.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let targets = query(&http, prom_addr, "up").await;
    assert_eq!(targets.len(), sidecars.len(), "scrape targets: {targets:?}");
    assert!(targets.iter().all(|t| t["value"][1] == "1"), "{targets:?}");

    // The load made every mechanism act, not only register its series.
    for (what, expr) in [
        ("retries", "sum(trellis_retries_total)"),
        (
            "retries the budget refused",
            "sum(trellis_retry_budget_exhausted_total)",
        ),
        (
            "breaker transitions",
            "sum(trellis_circuit_transitions_total)",
        ),
        ("fallback answers", "sum(trellis_fallback_responses_total)"),
        (
            "bulkhead rejections",
            "sum(trellis_bulkhead_rejected_total)",
        ),
        (
            "ejected endpoints (most at once)",
            "max(max_over_time(trellis_endpoints{state=\"ejected\"}[1m]))",
        ),
    ] {
        let result = query(&http, prom_addr, expr).await;
        let value: f64 = result
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        println!("{what}: {value}");
        assert!(value > 0.0, "{what}: {expr} = {value}");
    }

    let mut empty = Vec::new();
    let mut evaluated = 0;
    for d in Dashboard::all().unwrap() {
        if d.file == "operator.json" {
            continue;
        }
        for (title, expr) in d.queries() {
            let expr = expand_variables(&expr, RATE_WINDOW);
            let series = query(&http, prom_addr, &expr).await;
            println!("{:>4} series  {} / {title}", series.len(), d.file);
            evaluated += 1;
            if series.is_empty() {
                empty.push(format!("{} / {title}: {expr}", d.file));
            }
        }
        for var in ["namespace", "service"] {
            let q = d.variable(var).unwrap()["query"]["query"].as_str().unwrap();
            let (selector, label) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(", "))
                .unwrap();
            let values: Vec<Value> = http
                .get(format!("http://{prom_addr}/api/v1/label/{label}/values"))
                .query(&[("match[]", expand_variables(selector, RATE_WINDOW))])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["data"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!(
                "{:>4} values  {} / variable {var}: {values:?}",
                values.len(),
                d.file
            );
            if values.is_empty() {
                empty.push(format!("{} / variable {var}: {q}", d.file));
            }
        }
    }
    assert!(evaluated >= 20, "only {evaluated} queries");
    assert!(
        empty.is_empty(),
        "queries without a series:\n{}",
        empty.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
