//! Process tests of the resilience layers through the real proxy:
//! ResiliencePolicy YAML rendered into a sidecar config as the operator does
//! it (resolution, route overlays, defaults), `Proxy::start` on 127.0.0.1,
//! upstream servers that fail on command behind static discovery, a
//! hyper-util client on the outbound (or inbound) listener naming the
//! upstream in `Host`, and the outcome read back from the admin port
//! (`/metrics`, `/endpoints`, `/config`). Real sockets, real time; each test
//! takes a few seconds at most, and none asserts on speed.

#[path = "resilience_support/fault.rs"]
mod fault;
#[path = "resilience_support/mesh.rs"]
mod mesh;

use std::time::Duration;

use bytes::Bytes;
use fault::{FaultServer, Mode, failure_sequence};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mesh::{Mesh, call, eventually, get, grpc, load, request};
use serde_json::json;

/// Under a total outage retries add at most the budget: upstream requests ≤
/// (1 + ratio) × requests + minPerSecond × window (the run is shorter than
/// the window, so the reserve is counted once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_amplification_when_everything_fails() {
    let payments = FaultServer::start(Mode::Status(503)).await;
    let mesh = Mesh::start(
        &[("payments", &[payments.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: payments}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 5ms, jitter: full}
    retryOn: ["503"]
    budget: {ratio: 0.2, minPerSecond: 5, window: 5s}
"#,
    )
    .await;
    let answers = load(
        &mesh.outbound,
        4,
        usize::MAX,
        Duration::from_millis(2500),
        |_| get("payments", "/pay"),
    )
    .await;
    let requests = answers.len() as f64;
    let hits = payments.hits() as f64;
    let (ratio, min_per_second, window) = (0.2, 5.0, 5.0);
    let bound = (1.0 + ratio) * requests + min_per_second * window;
    // The upstream's own 503 reaches the caller (no fallback configured).
    assert!(
        answers
            .iter()
            .all(|a| a.status == 503 && a.error().is_none()),
        "{:?}",
        answers
            .iter()
            .find(|a| a.status != 503 || a.error().is_some())
    );
    // Every request wants 2 retries: with this many the budget must run out.
    assert!(requests >= 50.0, "too little load: {requests}");
    assert!(
        hits <= bound,
        "{hits} upstream requests for {requests} requests (bound {bound})"
    );
    assert!(
        hits > requests * 1.1,
        "the budget was not used: {hits} for {requests}"
    );
    let m = mesh.metrics().await;
    assert!(
        m.value(
            "trellis_retry_budget_exhausted_total",
            &[("peer", "payments")]
        ) > 0.0
    );
    assert_eq!(
        m.value(
            "trellis_retries_total",
            &[("peer", "payments"), ("reason", "503")]
        ),
        hits - requests
    );
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("direction", "outbound"), ("peer", "payments")]
        ),
        requests
    );
}

/// 50 % random failures (a seeded sequence) stay under a 60 % threshold:
/// the breaker never opens, at any moment of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stays_closed_below_its_threshold() {
    const N: usize = 600;
    // The fixture: the upstream fails the n-th request it handles iff this says so.
    let fails = failure_sequence(0.5, N);
    let expected = fails.iter().filter(|f| **f).count();
    let longest_run = fails.split(|f| !*f).map(<[bool]>::len).max().unwrap_or(0);
    assert!((250..350).contains(&expected), "{expected}");
    // Far enough below the settings that 4 concurrent calls finishing out of
    // order cannot matter: when the breaker has recorded k outcomes, they are
    // among the first k + 3 draws (at most 4 calls are in flight), and it
    // trips at failures × 100 ≥ 60 × k once k ≥ minimumRequests (200).
    let failures_in = |n: usize| fails[..n.min(N)].iter().filter(|f| **f).count();
    assert!(longest_run + 6 < 30, "{longest_run}");
    let trips = (200..=N).find(|&k| failures_in(k + 3) * 100 >= 60 * k);
    assert_eq!(trips, None, "the fixture could trip the breaker");

    let users = FaultServer::start(Mode::Random {
        rate: 0.5,
        status: 500,
    })
    .await;
    let mesh = Mesh::start(
        &[("users", &[users.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: users, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: users}
  circuitBreaker:
    failureRateThreshold: 60
    minimumRequests: 200
    window: 10s
    consecutiveFailures: 30
    openDuration: 1s
    halfOpenRequests: 1
"#,
    )
    .await;
    // Watch the breaker's state on the admin port while the load runs.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let admin = mesh::client(mesh.proxy.admin_addr);
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let a = call(&admin, get("admin", "/metrics")).await;
                let m = mesh::Scrape::parse(std::str::from_utf8(&a.body).unwrap());
                seen.push(m.value("trellis_circuit_state", &[("peer", "users")]));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let answers = load(&mesh.outbound, 4, N, Duration::from_secs(20), |_| {
        get("users", "/u")
    })
    .await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let states = sampler.await.unwrap();

    assert_eq!(answers.len(), N);
    let failed = answers.iter().filter(|a| a.status == 500).count();
    assert_eq!(failed, expected, "the upstream's failures reach the caller");
    assert!(answers.iter().all(|a| a.error().is_none()), "a proxy error");
    assert!(
        !states.is_empty() && states.iter().all(|s| *s == 0.0),
        "{states:?}"
    );
    let m = mesh.metrics().await;
    assert_eq!(m.value("trellis_circuit_state", &[("peer", "users")]), 0.0);
    for to in ["open", "half-open", "closed"] {
        assert_eq!(
            m.value(
                "trellis_circuit_transitions_total",
                &[("peer", "users"), ("to", to)]
            ),
            0.0,
            "transitions to {to}"
        );
    }
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("peer", "users"), ("status_class", "5xx")]
        ),
        expected as f64
    );
}

/// The upstream goes down: the breaker opens after consecutiveFailures, an
/// open circuit answers with the fallback without calling the upstream, a
/// probe while it is still down re-opens it (for twice as long), and a
/// probe after it is back closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_outage_and_a_probe_closes_it_after_recovery() {
    let orders = FaultServer::start(Mode::Ok).await;
    let mesh = Mesh::start(
        &[("orders", &[orders.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: orders}
  circuitBreaker:
    consecutiveFailures: 5
    openDuration: 500ms
    maxOpenDuration: 5s
    halfOpenRequests: 1
  fallback:
    status: 503
    body: '{"error":"orders unavailable"}'
    contentType: application/json
"#,
    )
    .await;
    let transitions = |m: &mesh::Scrape, to: &str| {
        m.value(
            "trellis_circuit_transitions_total",
            &[("peer", "orders"), ("to", to)],
        )
    };
    let state = |m: &mesh::Scrape| m.value("trellis_circuit_state", &[("peer", "orders")]);
    // A pooled connection may see the shutdown as a reset; new ones are refused.
    let down = |a: &mesh::Answer| {
        a.status == 502 && matches!(a.error(), Some("connect-failure" | "reset")) && !a.fallback()
    };
    let fallback = |a: &mesh::Answer| {
        a.status == 503
            && a.fallback()
            && a.error() == Some("circuit-open")
            && a.body == r#"{"error":"orders unavailable"}"#
            && a.headers["content-type"] == "application/json"
    };

    for _ in 0..10 {
        assert!(mesh.get("orders", "/o").await.ok());
    }
    orders.down().await;
    // 15 calls in the window, below minimumRequests (20): only the run of 5 trips it.
    for i in 0..4 {
        let a = mesh.get("orders", "/o").await;
        assert!(down(&a), "call {i}: {a:?}");
    }
    assert_eq!(state(&mesh.metrics().await), 0.0);
    let a = mesh.get("orders", "/o").await;
    assert!(down(&a), "{a:?}");
    let m = mesh.metrics().await;
    assert_eq!(state(&m), 1.0);
    assert_eq!(transitions(&m, "open"), 1.0);

    // Open: the fallback, not the upstream's error.
    let a = mesh.get("orders", "/o").await;
    assert!(fallback(&a), "{a:?}");

    // After openDuration a probe goes through, fails, and re-opens for 0.9–1 s.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let probe = mesh.get("orders", "/o").await;
    assert!(down(&probe), "{probe:?}");
    let m = mesh.metrics().await;
    assert_eq!(state(&m), 1.0);
    assert_eq!(transitions(&m, "half-open"), 1.0);
    assert_eq!(transitions(&m, "open"), 2.0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = mesh.get("orders", "/o").await;
    assert!(fallback(&a), "still open after 400 ms: {a:?}");

    // The upstream comes back; once the longer open time is over, the probe closes it.
    orders.up().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hits = orders.hits();
    let probe = mesh.get("orders", "/o").await;
    assert!(probe.ok(), "{probe:?}");
    assert_eq!(orders.hits(), hits + 1);
    assert!(mesh.get("orders", "/o").await.ok());
    let m = mesh.metrics().await;
    assert_eq!(state(&m), 0.0);
    assert_eq!(transitions(&m, "open"), 2.0);
    assert_eq!(transitions(&m, "half-open"), 2.0);
    assert_eq!(transitions(&m, "closed"), 1.0);
    assert_eq!(
        m.value("trellis_fallback_responses_total", &[("peer", "orders")]),
        2.0
    );
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("peer", "orders"), ("outcome", "circuit-open")]
        ),
        2.0
    );
}

/// POST is not retried; PUT is, with the same body every time; a 100 KiB
/// body is sent once, whether its length is declared or found out while
/// it streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_replayable_requests_are_retried() {
    let products = FaultServer::start(Mode::Status(503)).await;
    let mesh = Mesh::start(
        &[("products", &[products.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: products, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: products}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 2ms, jitter: none}
    retryOn: ["503"]
    budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
"#,
    )
    .await;
    let a = mesh
        .call(request("POST", "products", "/p", "new product"))
        .await;
    assert_eq!(a.status, 503);
    assert_eq!(products.hits(), 1, "POST was retried");

    let a = mesh
        .call(request("PUT", "products", "/p/1", "price=5"))
        .await;
    assert_eq!(a.status, 503);
    let seen = products.seen();
    assert_eq!(seen.len(), 4, "PUT was not retried twice");
    for s in &seen[1..] {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("PUT", "/p/1"));
        assert_eq!(s.body, "price=5");
    }

    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let a = mesh
        .call(request("PUT", "products", "/p/2", big.clone()))
        .await;
    assert_eq!(a.status, 503);
    let seen = products.seen();
    assert_eq!(seen.len(), 5, "a 100 KiB body was retried");
    assert_eq!(seen[4].body, big);
    assert_eq!(seen[4].headers["content-length"], "102400");

    // Chunked, no length: the proxy finds out while replaying it.
    let chunks = big
        .chunks(4096)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect::<Vec<Result<_, std::convert::Infallible>>>();
    let streamed = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let req = http::Request::put("http://products/p/3")
        .body(streamed)
        .unwrap();
    let a = mesh.call(req).await;
    assert_eq!(a.status, 503);
    let seen = products.seen();
    assert_eq!(seen.len(), 6, "a streamed 100 KiB body was retried");
    assert_eq!(seen[5].body, big);
    assert!(!seen[5].headers.contains_key("content-length"));

    let m = mesh.metrics().await;
    assert_eq!(
        m.value(
            "trellis_retries_total",
            &[("peer", "products"), ("reason", "503")]
        ),
        2.0
    );
}

/// The upstream resets the connection: an idempotent request is retried
/// (`retryOn: reset`) and gets 502 `reset` in the end; a POST, which may
/// have reached the app, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_for_idempotent_requests_only() {
    let ledger = FaultServer::start(Mode::Reset).await;
    let mesh = Mesh::start(
        &[("ledger", &[ledger.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: ledger, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: ledger}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 2ms, jitter: none}
    retryOn: [reset]
    budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
"#,
    )
    .await;
    let a = mesh.get("ledger", "/balance").await;
    assert_eq!(
        (a.status.as_u16(), a.error()),
        (502, Some("reset")),
        "{a:?}"
    );
    assert_eq!(ledger.hits(), 3);
    let a = mesh.call(request("POST", "ledger", "/entries", "+5")).await;
    assert_eq!(
        (a.status.as_u16(), a.error()),
        (502, Some("reset")),
        "{a:?}"
    );
    assert_eq!(ledger.hits(), 4, "POST was retried");
    // The upstream is fine again: the next GET goes through at once.
    ledger.set_mode(Mode::Ok);
    assert!(mesh.get("ledger", "/balance").await.ok());
    assert_eq!(ledger.hits(), 5);
    let m = mesh.metrics().await;
    assert_eq!(
        m.value(
            "trellis_retries_total",
            &[("peer", "ledger"), ("reason", "reset")]
        ),
        2.0
    );
}

/// One endpoint of three fails every request: it is ejected (gauge and
/// `/endpoints`), and with retries on the callers barely notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_callers_succeed() {
    const N: usize = 2000;
    let good1 = FaultServer::start(Mode::Ok).await;
    let good2 = FaultServer::start(Mode::Ok).await;
    // Fast 503s: the balancer's latency estimate alone would keep sending here.
    let bad = FaultServer::start(Mode::Status(503)).await;
    let mesh = Mesh::start(
        &[("inventory", &[good1.addr, good2.addr, bad.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: inventory, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: inventory}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 10ms, jitter: full}
    retryOn: [connect-failure, reset, "502", "503"]
    budget: {ratio: 0.2, minPerSecond: 10, window: 10s}
  outlierDetection: {consecutiveFailures: 3, baseEjection: 30s, maxEjectionPercent: 50}
"#,
    )
    .await;
    let answers = load(&mesh.outbound, 4, N, Duration::from_secs(30), |_| {
        get("inventory", "/i")
    })
    .await;
    assert_eq!(answers.len(), N);
    let ok = answers.iter().filter(|a| a.ok()).count();
    assert!(ok as f64 >= 0.999 * N as f64, "{ok} of {N} succeeded");
    // Ejected after a handful of attempts; the good ones took the traffic.
    assert!(bad.hits() <= 10, "bad endpoint got {} requests", bad.hits());
    assert_eq!(
        (good1.hits() + good2.hits()) as usize,
        ok,
        "every success came from a good endpoint, once"
    );

    let m = mesh.metrics().await;
    let gauge = |state| {
        m.value(
            "trellis_endpoints",
            &[("peer", "inventory"), ("state", state)],
        )
    };
    assert_eq!((gauge("ejected"), gauge("ready")), (1.0, 2.0));
    assert!(
        m.value(
            "trellis_retries_total",
            &[("peer", "inventory"), ("reason", "503")]
        ) >= 1.0
    );
    let eps = mesh.admin_json("/endpoints").await;
    let up = &eps["upstreams"][0];
    assert_eq!(up["name"], "inventory");
    let mut states: Vec<(String, String)> = up["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    let mut want = vec![
        (good1.addr.to_string(), "ready".to_string()),
        (good2.addr.to_string(), "ready".to_string()),
        (bad.addr.to_string(), "ejected".to_string()),
    ];
    want.sort();
    assert_eq!(states, want);
}

/// Outlier detection reads a gRPC status where gRPC puts it, in the
/// trailers: an endpoint that answers every call with UNAVAILABLE (HTTP 200,
/// status after the message) is ejected like one answering 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_endpoint_failing_in_its_trailers_is_ejected() {
    const N: usize = 300;
    let good1 = FaultServer::start(Mode::GrpcTrailer(0)).await;
    let good2 = FaultServer::start(Mode::GrpcTrailer(0)).await;
    let bad = FaultServer::start(Mode::GrpcTrailer(14)).await;
    let mesh = Mesh::start(
        &[("pricing", &[good1.addr, good2.addr, bad.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: pricing, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: pricing}
  outlierDetection: {consecutiveFailures: 3, baseEjection: 30s, maxEjectionPercent: 50}
"#,
    )
    .await;
    let answers = load(&mesh.outbound_h2, 4, N, Duration::from_secs(30), |_| {
        grpc("pricing", "/pricing.Pricing/Quote")
    })
    .await;
    assert_eq!(answers.len(), N);
    let unavailable = answers
        .iter()
        .filter(|a| a.grpc_status() == Some(14))
        .count();
    // Three in a row eject it; calls already in flight to it may still fail.
    assert!(bad.hits() <= 10, "bad endpoint got {} calls", bad.hits());
    assert_eq!(unavailable as u64, bad.hits());
    let eps = mesh.admin_json("/endpoints").await;
    let state_of = |addr: std::net::SocketAddr| {
        eps["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .map(|e| e["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state_of(bad.addr).as_deref(), Some("ejected"));
    assert_eq!(state_of(good1.addr).as_deref(), Some("ready"));
}

/// One upstream, two routes, two behaviours: `/items` (the service-level
/// policy) retries and shares the upstream's lenient breaker; `/checkout`
/// overrides only `retry.attempts` and `circuitBreaker.consecutiveFailures`,
/// so it never retries and gets its own, stricter breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_overrides_apply_to_their_route_only() {
    let cart = FaultServer::start(Mode::Status(503)).await;
    let mesh = Mesh::start(
        &[("cart", &[cart.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: cart, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: cart}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 2ms, jitter: none}
    retryOn: ["503"]
    budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
  circuitBreaker:
    failureRateThreshold: 50
    minimumRequests: 100
    consecutiveFailures: 100
    openDuration: 10s
  routes:
  - match: {pathPrefix: /checkout}
    retry: {attempts: 1}
    circuitBreaker: {consecutiveFailures: 3}
"#,
    )
    .await;
    for _ in 0..3 {
        let a = mesh.get("cart", "/items?page=2").await;
        assert_eq!((a.status.as_u16(), a.error()), (503, None));
    }
    assert_eq!(cart.hits(), 9, "/items retries twice per call");
    for _ in 0..3 {
        let a = mesh.get("cart", "/checkout/42").await;
        assert_eq!((a.status.as_u16(), a.error()), (503, None));
    }
    assert_eq!(cart.hits(), 12, "/checkout never retries");
    // Its own breaker opened after 3 failures; the upstream's did not.
    let a = mesh.get("cart", "/checkout").await;
    assert_eq!((a.status.as_u16(), a.error()), (503, Some("circuit-open")));
    assert_eq!(cart.hits(), 12);
    let a = mesh.get("cart", "/items").await;
    assert_eq!((a.status.as_u16(), a.error()), (503, None));
    assert_eq!(cart.hits(), 15);

    let m = mesh.metrics().await;
    let state = |peer| m.value("trellis_circuit_state", &[("peer", peer)]);
    assert_eq!((state("cart /checkout*"), state("cart")), (1.0, 0.0));
    let opened = |peer| {
        m.value(
            "trellis_circuit_transitions_total",
            &[("peer", peer), ("to", "open")],
        )
    };
    assert_eq!((opened("cart /checkout*"), opened("cart")), (1.0, 0.0));
    assert_eq!(
        m.value(
            "trellis_retries_total",
            &[("peer", "cart"), ("reason", "503")]
        ),
        8.0
    );
}

/// The request timeout answers 504 `timeout`; a route may shorten it; a
/// caller's `grpc-timeout` shortens the deadline but never lengthens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeouts_and_grpc_timeout_bound_the_call() {
    // Slower than the short deadlines, well within the long one.
    let search = FaultServer::start(Mode::Delay(Duration::from_millis(400))).await;
    let mesh = Mesh::start(
        &[("search", &[search.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: search, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: search}
  timeout: {request: 5s}
  routes:
  - match: {pathPrefix: /quick}
    timeout: {request: 100ms}
"#,
    )
    .await;
    let timed_out = |a: &mesh::Answer| a.status == 504 && a.error() == Some("timeout");

    let a = mesh.get("search", "/results").await;
    assert!(a.ok(), "{a:?}");
    let a = mesh.get("search", "/quick/results").await;
    assert!(timed_out(&a), "{a:?}");

    let mut req = get("search", "/results");
    req.headers_mut()
        .insert("grpc-timeout", "100m".parse().unwrap());
    let a = mesh.call(req).await;
    assert!(timed_out(&a), "grpc-timeout did not shorten 5s: {a:?}");

    let mut req = get("search", "/quick/results");
    req.headers_mut()
        .insert("grpc-timeout", "10S".parse().unwrap());
    let a = mesh.call(req).await;
    assert!(timed_out(&a), "grpc-timeout lengthened 100ms: {a:?}");

    // A gRPC caller over HTTP/2, the header's usual home, gets a gRPC answer:
    // DEADLINE_EXCEEDED, trailers-only.
    let mut req = grpc("search", "/search.Search/Find");
    req.headers_mut()
        .insert("grpc-timeout", "100m".parse().unwrap());
    let a = call(&mesh.outbound_h2, req).await;
    assert_eq!(
        (a.status.as_u16(), a.grpc_status(), a.error()),
        (200, Some(4), Some("timeout")),
        "{a:?}"
    );
    assert!(a.body.is_empty() && a.trailers.is_none(), "{a:?}");

    let m = mesh.metrics().await;
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("peer", "search"), ("outcome", "timeout")]
        ),
        4.0
    );
}

/// gRPC UNAVAILABLE in the trailers of a unary reply: a POST is not retried
/// under the service-level policy; the route that allows it retries, and the
/// good reply reaches the client whole, trailers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_in_trailers_is_retried_where_the_route_allows() {
    let catalog = FaultServer::start(Mode::GrpcTrailer(14)).await;
    let mesh = Mesh::start(
        &[("catalog", &[catalog.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: catalog, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: catalog}
  retry:
    attempts: 3
    backoff: {base: 1ms, max: 2ms, jitter: none}
    retryOn: [grpc-unavailable]
    budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
  routes:
  - match: {path: /catalog.Catalog/Get}
    retry: {allowNonIdempotent: true}
"#,
    )
    .await;
    let a = call(&mesh.outbound_h2, grpc("catalog", "/catalog.Catalog/List")).await;
    assert_eq!(
        (a.status.as_u16(), a.grpc_status()),
        (200, Some(14)),
        "{a:?}"
    );
    assert_eq!(
        catalog.hits(),
        1,
        "a gRPC call was retried without allowNonIdempotent"
    );

    catalog.set_mode(Mode::GrpcUnavailableFirst(catalog.hits() + 2));
    let a = call(&mesh.outbound_h2, grpc("catalog", "/catalog.Catalog/Get")).await;
    assert_eq!(
        (a.status.as_u16(), a.grpc_status()),
        (200, Some(0)),
        "{a:?}"
    );
    assert_eq!(a.body, &b"\0\0\0\0\x02hi"[..]);
    assert_eq!(catalog.hits(), 4);
    let m = mesh.metrics().await;
    assert_eq!(
        m.value(
            "trellis_retries_total",
            &[("peer", "catalog"), ("reason", "grpc-unavailable")]
        ),
        2.0
    );
}

/// A full bulkhead answers 503 `bulkhead-full` at once without calling the
/// upstream; a route with a fallback (sharing the upstream's bulkhead, as
/// its settings are the same) answers with the fallback instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_rejects_or_falls_back() {
    let reports = FaultServer::start(Mode::Hold).await;
    let mesh = Mesh::start(
        &[("reports", &[reports.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: reports, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: reports}
  bulkhead: {maxConcurrent: 2}
  routes:
  - match: {pathPrefix: /summary}
    fallback: {status: 200, body: '{"cached":true}', contentType: application/json}
"#,
    )
    .await;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let client = mesh.outbound.clone();
            tokio::spawn(async move { call(&client, get("reports", &format!("/r/{i}"))).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async { reports.hits() == 2 }).await,
        "the two calls did not reach the upstream"
    );
    let a = mesh.get("reports", "/r/3").await;
    assert_eq!((a.status.as_u16(), a.error()), (503, Some("bulkhead-full")));
    assert!(!a.fallback());
    let a = mesh.get("reports", "/summary").await;
    assert_eq!(
        (a.status.as_u16(), a.error(), a.fallback()),
        (200, Some("bulkhead-full"), true)
    );
    assert_eq!(a.body, r#"{"cached":true}"#);
    assert_eq!(reports.hits(), 2, "a rejected call reached the upstream");

    reports.release();
    for h in held {
        assert!(h.await.unwrap().ok());
    }
    // Slots are freed when the held responses have streamed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            mesh.get("reports", "/r/4").await.ok()
        })
        .await
    );
    let m = mesh.metrics().await;
    assert_eq!(
        m.value("trellis_bulkhead_rejected_total", &[("peer", "reports")]),
        2.0
    );
    assert_eq!(
        m.value("trellis_fallback_responses_total", &[("peer", "reports")]),
        1.0
    );
}

/// The inbound rate limit of the caller's own policy: the burst passes,
/// then 429 `rate-limited` with `Retry-After`, and the app is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rate_limit_answers_429_with_retry_after() {
    let app = FaultServer::start(Mode::Ok).await;
    let mesh = Mesh::start_with_app(
        app.addr,
        &[],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: web-inbound, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: web}
  inbound:
    rateLimit: {requestsPerSecond: 1, burst: 3}
"#,
    )
    .await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(call(&mesh.inbound, get("web", "/hello")).await);
    }
    // One token a second: the fourth call, right after the burst, finds none.
    for a in &answers[..3] {
        assert!(a.ok(), "{a:?}");
    }
    let limited = &answers[3];
    assert_eq!(
        (limited.status.as_u16(), limited.error()),
        (429, Some("rate-limited"))
    );
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    assert_eq!(app.hits(), 3);
    let m = mesh.metrics().await;
    assert_eq!(m.value("trellis_rate_limited_total", &[]), 1.0);
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("direction", "inbound"), ("outcome", "rate-limited")]
        ),
        1.0
    );
}

/// The inbound concurrency limit: with `maxConcurrent` calls in flight to
/// the app, the next is refused at once with 503 `overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_max_concurrent_answers_503_overloaded() {
    let app = FaultServer::start(Mode::Hold).await;
    let mesh = Mesh::start_with_app(
        app.addr,
        &[],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: web-inbound, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: web}
  inbound: {maxConcurrent: 2}
"#,
    )
    .await;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let client = mesh.inbound.clone();
            tokio::spawn(async move { call(&client, get("web", &format!("/work/{i}"))).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async { app.hits() == 2 }).await,
        "the two calls did not reach the app"
    );
    let a = call(&mesh.inbound, get("web", "/work/3")).await;
    assert_eq!((a.status.as_u16(), a.error()), (503, Some("overloaded")));
    assert_eq!(app.hits(), 2);
    app.release();
    for h in held {
        assert!(h.await.unwrap().ok());
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(&mesh.inbound, get("web", "/work/4")).await.ok()
        })
        .await
    );
    let m = mesh.metrics().await;
    assert_eq!(
        m.value(
            "trellis_requests_total",
            &[("direction", "inbound"), ("outcome", "overloaded")]
        ),
        1.0
    );
}

/// `/config` shows what the proxy enforces: the effective policy of each
/// upstream and of each route, a route's unset fields inherited from the
/// service-level policy and the rest filled with defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_the_effective_merged_policy() {
    let orders = FaultServer::start(Mode::Ok).await;
    let payments = FaultServer::start(Mode::Ok).await;
    let mesh = Mesh::start(
        &[("orders", &[orders.addr]), ("payments", &[payments.addr])],
        r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: orders-policy, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: orders}
  timeout: {request: 5s, connect: 500ms}
  retry:
    attempts: 3
    perTryTimeout: 700ms
    backoff: {base: 10ms, max: 200ms, jitter: equal}
    retryOn: ["503", reset]
  circuitBreaker: {consecutiveFailures: 7}
  routes:
  - match: {pathPrefix: /api/reports}
    retry: {attempts: 1}
  - match: {path: /api/orders, methods: [POST]}
    timeout: {request: 1500ms}
    retry: {allowNonIdempotent: true}
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: web-inbound, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: web}
  inbound: {rateLimit: {requestsPerSecond: 50}}
"#,
    )
    .await;
    let cfg = mesh.admin_json("/config").await;
    let ups = cfg["upstreams"].as_array().unwrap();
    let names: Vec<&str> = ups.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders", "payments"]);
    let (orders_cfg, payments_cfg) = (&ups[0], &ups[1]);
    assert_eq!(orders_cfg["sources"], json!(["orders-policy"]));
    assert_eq!(
        orders_cfg["discovery"],
        json!({"static": {"addresses": [orders.addr.to_string()]}})
    );

    let retry = |attempts: u32, allow_non_idempotent: bool| {
        json!({
            "attempts": attempts,
            "perTryTimeout": "700ms",
            "backoff": {"base": "10ms", "max": "200ms", "jitter": "equal"},
            "retryOn": ["503", "reset"],
            "budget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"},
            "allowNonIdempotent": allow_non_idempotent,
        })
    };
    let breaker = json!({
        "failureRateThreshold": 50,
        "minimumRequests": 20,
        "window": "10s",
        "consecutiveFailures": 7,
        "openDuration": "5s",
        "maxOpenDuration": "1m",
        "halfOpenRequests": 3,
    });
    let timeout = |request: &str| json!({"request": request, "connect": "500ms", "idle": "1m"});
    assert_eq!(
        orders_cfg["policy"],
        json!({"timeout": timeout("5s"), "retry": retry(3, false), "circuitBreaker": breaker})
    );
    // Most specific first: the exact path, then the prefix.
    assert_eq!(
        orders_cfg["routes"],
        json!([
            {
                "match": {"path": "/api/orders", "methods": ["POST"]},
                "policy": {"timeout": timeout("1s500ms"), "retry": retry(3, true), "circuitBreaker": breaker},
            },
            {
                "match": {"pathPrefix": "/api/reports"},
                "policy": {"timeout": timeout("5s"), "retry": retry(1, false), "circuitBreaker": breaker},
            },
        ])
    );
    // No policy for payments: nothing but the default timeouts.
    assert_eq!(
        payments_cfg["policy"],
        json!({"timeout": {"connect": "1s", "idle": "1m"}})
    );
    assert!(payments_cfg.get("routes").is_none() && payments_cfg.get("sources").is_none());
    // The caller's own inbound limits; burst defaults to the rate.
    assert_eq!(
        cfg["inbound"],
        json!({"rateLimit": {"requestsPerSecond": 50, "burst": 50}})
    );
}
