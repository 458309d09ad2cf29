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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use trellis_api::crd::ResiliencePolicy;
use trellis_api::parse::from_yaml;
use trellis_e2e::delivery::Dashboard;
use trellis_e2e::local::{NAMESPACE, start_echo, start_sidecar};
use trellis_e2e::prometheus::{self, Prometheus, Target};
use trellis_e2e_app::api::{FAULT_PATH, Fault};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mesh_panel_query_returns_series_from_real_sidecars() {
    let Some(prometheus_bin) = prometheus::binary() else {
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

    let targets: Vec<Target> = sidecars
        .iter()
        .map(|s| Target {
            addr: s.admin,
            labels: BTreeMap::from([
                ("namespace", NAMESPACE.to_string()),
                ("service", s.service.to_string()),
            ]),
        })
        .collect();
    let prom = Prometheus::start(&prometheus_bin, &targets, &dir)
        .await
        .unwrap();

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

    let up = prom.query("up").await.unwrap();
    assert_eq!(up.len(), sidecars.len(), "scrape targets: {up:?}");
    assert!(up.iter().all(|t| t["value"][1] == "1"), "{up:?}");

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
        let value = prom.scalar(expr).await.unwrap();
        println!("{what}: {value}");
        assert!(value > 0.0, "{what}: {expr} = {value}");
    }

    let mut empty = Vec::new();
    let mut evaluated = 0;
    for d in Dashboard::all().unwrap() {
        if d.file == "operator.json" {
            continue;
        }
        for e in prom.evaluate(&d).await.unwrap() {
            println!("{:>4}  {} / {}", e.count, d.file, e.what);
            evaluated += 1;
            if e.count == 0 {
                empty.push(format!("{} / {}: {}", d.file, e.what, e.expr));
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
