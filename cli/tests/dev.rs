//! `trellis dev` end to end: the shop's real binaries with real sidecars on
//! loopback. A service is killed under traffic: its caller's breaker opens
//! (the sidecar's metrics say so) and the caller gets the policy's
//! fallback; the service is restarted by `trellis dev` and the breaker
//! closes. A policy edit reaches the running sidecar. SIGINT leaves no
//! process behind.

mod common;

use std::time::{Duration, Instant};

use common::{Dev, assert_broker, build, example, metric, survivors};

const FALLBACK: &str = r#"{"error":"products unavailable"}"#;

fn policy(fallback_body: &str) -> String {
    format!(
        r#"apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: products, namespace: shop}}
spec:
  targetRef: {{kind: MeshService, name: products}}
  retry: {{attempts: 1}}
  circuitBreaker: {{consecutiveFailures: 3, openDuration: 2s, maxOpenDuration: 2s, halfOpenRequests: 1}}
  fallback: {{status: 503, body: '{fallback_body}', contentType: application/json}}
"#
    )
}

async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_trips_its_callers_breaker_and_is_restarted() {
    build(&["gateway", "users", "products"]);
    let mut dev = Dev::start(
        &[
            example("gateway"),
            example("users"),
            example("products"),
            ("policy.yaml".into(), policy(FALLBACK)),
        ],
        &[],
    );
    assert!(dev.printed("all 3 services ready"), "not all ready");
    assert_broker(&dev);
    let http = dev.http.clone();

    // Through the gateway and both sidecars.
    let page = http
        .get(format!("{}/api/products?limit=3", dev.gateway))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(page.status(), 200);
    let page: serde_json::Value = page.json().await.expect("JSON");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(3), "{page}");

    // The gateway's own sidecar is where its calls to products go.
    let gateway = dev.service("gateway").await;
    let outbound = format!(
        "http://127.0.0.1:{}/api/v1/products?limit=1",
        gateway["ports"]["outbound"]
    );
    let call_products = || {
        let http = http.clone();
        let outbound = outbound.clone();
        async move {
            let r = http
                .get(&outbound)
                .header("host", "products")
                .send()
                .await
                .expect("the gateway's sidecar answers");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(call_products().await.0, 200);

    let products = dev.service("products").await;
    let pid = products["app"]["pid"].as_i64().expect("products runs") as i32;
    let opened_before = metric(
        &dev.metrics("gateway").await,
        "trellis_circuit_transitions_total",
        &["peer=\"products\"", "to=\"open\""],
    );
    // SAFETY: a kill(2) of a process `trellis dev` started for this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }

    // Calls fail until the breaker opens; then they get the fallback.
    let open = until(
        "the gateway→products breaker opens",
        Duration::from_secs(20),
        || async {
            let _ = call_products().await;
            let m = dev.metrics("gateway").await;
            metric(
                &m,
                "trellis_circuit_transitions_total",
                &["peer=\"products\"", "to=\"open\""],
            ) > opened_before
        },
    )
    .await;
    eprintln!("breaker open {open:?} after the kill");
    let mut fallback_seen = false;
    for _ in 0..50 {
        let (status, body) = call_products().await;
        if status == 503 && body == FALLBACK {
            fallback_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fallback_seen,
        "no fallback answer while the breaker was open"
    );
    let m = dev.metrics("gateway").await;
    assert!(
        metric(
            &m,
            "trellis_fallback_responses_total",
            &["peer=\"products\""]
        ) >= 1.0,
        "{m}"
    );

    // `trellis dev` restarts products; the breaker closes again.
    let closed = until(
        "products restarted and the breaker closed",
        Duration::from_secs(60),
        || async {
            let _ = call_products().await;
            let m = dev.metrics("gateway").await;
            metric(&m, "trellis_circuit_state", &["peer=\"products\""]) == 0.0
                && metric(
                    &m,
                    "trellis_circuit_transitions_total",
                    &["peer=\"products\"", "to=\"closed\""],
                ) >= 1.0
        },
    )
    .await;
    eprintln!("breaker closed {closed:?} after it opened");
    assert!(
        dev.printed("products") && dev.printed("crashed"),
        "the crash was not reported"
    );
    let products = dev.service("products").await;
    assert_eq!(products["app"]["restarts"], 1, "{products}");
    assert_ne!(products["app"]["pid"].as_i64(), Some(i64::from(pid)));
    assert_eq!(call_products().await.0, 200);

    // A policy edit reaches the running sidecar.
    std::fs::write(
        dev.manifest("policy.yaml"),
        policy(r#"{"error":"products away"}"#),
    )
    .expect("edit");
    let admin = gateway["ports"]["admin"].clone();
    let reloaded = until(
        "the edited policy reaches the gateway's sidecar",
        Duration::from_secs(20),
        || async {
            let config = http
                .get(format!("http://127.0.0.1:{admin}/config"))
                .send()
                .await
                .expect("admin answers")
                .text()
                .await
                .unwrap_or_default();
            config.contains("products away")
        },
    )
    .await;
    eprintln!("policy edit applied in {reloaded:?}");
    assert!(
        dev.printed("new config for gateway"),
        "the reload was not reported"
    );

    let pids = dev.pids().await;
    assert_eq!(pids.len(), 6, "{pids:?}");
    let needle = dev.dir.path().display().to_string();
    assert!(
        dev.interrupt(),
        "trellis dev did not exit cleanly on SIGINT"
    );
    assert!(dev.printed("stopped"));
    let left = survivors(&pids, &needle);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
