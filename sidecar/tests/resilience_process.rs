//! Process tests of the resilience stack: real upstream servers on
//! 127.0.0.1 failing on command, the stack over a real-HTTP attempt service
//! (the balancer's `EndpointSet` + a pooled hyper client), real sockets,
//! real time. Each test runs for a few seconds at most.

mod resilience_support;

use std::time::Duration;

use http::Method;
use resilience_support::*;
use trellis_proxy::resilience::CircuitState;

fn counter(m: &trellis_proxy::metrics::Metrics, name: &str, labels: &[&str]) -> u64 {
    match name {
        "retries" => m.retries_total.with_label_values(labels).get(),
        "exhausted" => m
            .retry_budget_exhausted_total
            .with_label_values(labels)
            .get(),
        "transitions" => m.circuit_transitions_total.with_label_values(labels).get(),
        "fallbacks" => m.fallback_responses_total.with_label_values(labels).get(),
        _ => panic!("{name}"),
    }
}

/// Under a total outage, retries add at most the budget:
/// upstream requests ≤ (1 + ratio) × requests + minPerSecond × window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_amplification_when_everything_fails() {
    let server = FaultServer::start(Mode::Status(503)).await;
    let up = upstream(
        "payments",
        &[server.addr],
        policy(
            r#"
            retry:
              attempts: 3
              backoff: {base: 1ms, max: 5ms, jitter: full}
              retryOn: ["503"]
              budget: {ratio: 0.2, minPerSecond: 5, window: 5s}
            "#,
        ),
        vec![],
    );
    let s = stack(&up, false);
    let answers = load(&s.svc, 4, usize::MAX, Duration::from_secs(3), |_| {
        get("/pay")
    })
    .await;
    let requests = answers.len() as f64;
    let hits = server.hits() as f64;
    let bound = 1.2 * requests + 5.0 * 5.0;
    assert!(answers.iter().all(|a| a.status == 503));
    assert!(requests > 100.0, "too little load: {requests}");
    assert!(
        hits <= bound,
        "{hits} upstream requests for {requests} requests (bound {bound})"
    );
    // The budget was used, then spent.
    assert!(
        hits > requests * 1.1,
        "retries were not made: {hits} for {requests}"
    );
    assert!(counter(&s.metrics, "exhausted", &["payments"]) > 0);
    assert_eq!(
        counter(&s.metrics, "retries", &["payments", "503"]) as f64,
        hits - requests
    );
}

/// 50 % random failures stay under a 60 % threshold: the breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stays_closed_below_its_threshold() {
    // Seeded: the upstream's failure sequence is the same on every run.
    let server = FaultServer::start(Mode::Random {
        rate: 0.5,
        status: 500,
    })
    .await;
    let up = upstream(
        "users",
        &[server.addr],
        policy(
            r#"
            circuitBreaker:
              failureRateThreshold: 60
              minimumRequests: 200
              window: 10s
              consecutiveFailures: 1000
              openDuration: 1s
              maxOpenDuration: 10s
              halfOpenRequests: 1
            "#,
        ),
        vec![],
    );
    let s = stack(&up, false);
    let answers = load(&s.svc, 4, 600, Duration::from_secs(20), |_| get("/u")).await;
    let failed = answers.iter().filter(|a| !a.ok()).count();
    assert_eq!(answers.len(), 600);
    assert!((200..400).contains(&failed), "{failed} of 600 failed");
    assert!(
        answers
            .iter()
            .all(|a| a.error.as_deref() != Some("circuit-open"))
    );
    assert_eq!(counter(&s.metrics, "transitions", &["users", "open"]), 0);
    assert_eq!(
        s.state.route(None).breaker().unwrap().state(),
        CircuitState::Closed
    );
}

/// The upstream goes down: the breaker opens after consecutiveFailures, a
/// probe while it is still down re-opens it for twice as long, and a probe
/// after it is back closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_outage_and_a_probe_closes_it_after_recovery() {
    let server = FaultServer::start(Mode::Ok).await;
    let up = upstream(
        "orders",
        &[server.addr],
        policy(
            r#"
            circuitBreaker:
              failureRateThreshold: 50
              minimumRequests: 20
              window: 10s
              consecutiveFailures: 5
              openDuration: 300ms
              maxOpenDuration: 5s
              halfOpenRequests: 1
            fallback: {status: 503, body: '{"error":"orders unavailable"}', contentType: application/json}
            "#,
        ),
        vec![],
    );
    let s = stack(&up, false);
    let breaker = s.state.route(None).breaker().unwrap().clone();
    for _ in 0..10 {
        assert!(call(&s.svc, get("/o")).await.ok());
    }
    server.down().await;
    // A pooled connection may see the shutdown as a reset; new ones are refused.
    let down = |a: &Answer| matches!(a.error.as_deref(), Some("connect-failure" | "reset"));
    for i in 0..5 {
        let a = call(&s.svc, get("/o")).await;
        assert!(down(&a), "call {i}: {a:?}");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    // Open: rejected at once with the fallback, the upstream is not called.
    let a = call(&s.svc, get("/o")).await;
    assert!(
        a.fallback && a.error.as_deref() == Some("circuit-open"),
        "{a:?}"
    );
    assert!(a.latency < Duration::from_millis(50), "{a:?}");
    // After the open duration a probe goes through, fails, and re-opens for ~600 ms.
    tokio::time::sleep(Duration::from_millis(320)).await;
    let probe = call(&s.svc, get("/o")).await;
    assert!(down(&probe), "{probe:?}");
    assert_eq!(breaker.state(), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        call(&s.svc, get("/o")).await.error.as_deref(),
        Some("circuit-open")
    );
    // The upstream comes back; the next probe closes the circuit.
    server.up().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(call(&s.svc, get("/o")).await.ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert!(call(&s.svc, get("/o")).await.ok());
    assert_eq!(counter(&s.metrics, "transitions", &["orders", "open"]), 2);
    assert_eq!(
        counter(&s.metrics, "transitions", &["orders", "half-open"]),
        2
    );
    assert_eq!(counter(&s.metrics, "transitions", &["orders", "closed"]), 1);
    assert!(counter(&s.metrics, "fallbacks", &["orders"]) >= 2);
    assert_eq!(
        s.metrics.circuit_state.with_label_values(&["orders"]).get(),
        0
    );
}

/// POST is not retried, PUT is (with the same body every time), and a
/// 100 KiB body is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_replayable_requests_are_retried() {
    let server = FaultServer::start(Mode::Status(503)).await;
    let up = upstream(
        "products",
        &[server.addr],
        policy(
            r#"
            retry:
              attempts: 3
              backoff: {base: 1ms, max: 2ms, jitter: none}
              retryOn: ["503"]
              budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
            "#,
        ),
        vec![],
    );
    let s = stack(&up, false);
    let a = call(&s.svc, with_body(Method::POST, "/p", "new product")).await;
    assert_eq!(a.status, 503);
    assert_eq!(server.hits(), 1, "POST was retried");

    let a = call(&s.svc, with_body(Method::PUT, "/p/1", "price=5")).await;
    assert_eq!(a.status, 503);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "PUT was not retried twice");
    assert!(
        seen[1..]
            .iter()
            .all(|r| r.method == Method::PUT && r.body == "price=5")
    );

    let big = vec![b'x'; 100 * 1024];
    let a = call(&s.svc, with_body(Method::PUT, "/p/2", big.clone())).await;
    assert_eq!(a.status, 503);
    let seen = server.seen();
    assert_eq!(seen.len(), 5, "a 100 KiB body was retried");
    assert_eq!(seen[4].body.len(), big.len());
}

/// One endpoint of three fails every request: it is ejected, and with
/// retries on the callers barely notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_callers_succeed() {
    let good1 = FaultServer::start(Mode::Ok).await;
    let good2 = FaultServer::start(Mode::Ok).await;
    // Fast 503s: the balancer's latency estimate alone would keep sending here.
    let bad = FaultServer::start(Mode::Status(503)).await;
    let up = upstream(
        "inventory",
        &[good1.addr, good2.addr, bad.addr],
        policy(
            r#"
            retry:
              attempts: 3
              backoff: {base: 1ms, max: 10ms, jitter: full}
              retryOn: [connect-failure, reset, "502", "503"]
              budget: {ratio: 0.2, minPerSecond: 10, window: 10s}
            outlierDetection: {consecutiveFailures: 3, baseEjection: 30s, maxEjectionPercent: 50}
            "#,
        ),
        vec![],
    );
    let s = stack(&up, false);
    let answers = load(&s.svc, 4, 2000, Duration::from_secs(30), |_| get("/i")).await;
    let ok = answers.iter().filter(|a| a.ok()).count();
    assert_eq!(answers.len(), 2000);
    assert!(ok as f64 >= 0.999 * 2000.0, "{ok} of 2000 succeeded");
    let detector = s.state.outlier().unwrap();
    assert!(detector.is_ejected(bad.addr, tokio::time::Instant::now()));
    assert_eq!(detector.ejected_count(tokio::time::Instant::now()), 1);
    assert_eq!(
        s.metrics
            .endpoints
            .with_label_values(&["inventory", "ejected"])
            .get(),
        1
    );
    // Ejected after a handful of attempts; the good ones took the traffic.
    assert!(bad.hits() <= 10, "bad endpoint got {} requests", bad.hits());
    assert!(counter(&s.metrics, "retries", &["inventory", "503"]) >= 1);
}

/// One upstream, two routes, two behaviours: `/search` retries and shares
/// the upstream's breaker, `/checkout` never retries and has its own,
/// stricter breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_overrides_apply_to_their_route_only() {
    let server = FaultServer::start(Mode::Status(503)).await;
    let base = r#"
        retry:
          attempts: 3
          backoff: {base: 1ms, max: 2ms, jitter: none}
          retryOn: ["503"]
          budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
        circuitBreaker:
          failureRateThreshold: 50
          minimumRequests: 100
          window: 10s
          consecutiveFailures: 100
          openDuration: 10s
          maxOpenDuration: 10s
          halfOpenRequests: 1
        "#;
    let checkout = r#"
        circuitBreaker:
          failureRateThreshold: 50
          minimumRequests: 100
          window: 10s
          consecutiveFailures: 3
          openDuration: 10s
          maxOpenDuration: 10s
          halfOpenRequests: 1
        "#;
    let up = upstream(
        "shop",
        &[server.addr],
        policy(base),
        vec![("/checkout", policy(checkout)), ("/search", policy(base))],
    );
    let s = stack(&up, false);
    for _ in 0..3 {
        assert_eq!(call(&s.svc, get("/search?q=x")).await.status, 503);
    }
    assert_eq!(server.hits(), 9, "/search retries twice per call");
    for _ in 0..3 {
        assert_eq!(call(&s.svc, get("/checkout")).await.error, None);
    }
    assert_eq!(server.hits(), 12, "/checkout never retries");
    // Its own breaker opened after 3 failures; the upstream's did not.
    let a = call(&s.svc, get("/checkout")).await;
    assert_eq!(a.error.as_deref(), Some("circuit-open"));
    assert_eq!(server.hits(), 12);
    assert_eq!(
        s.state.route(Some(0)).breaker().unwrap().state(),
        CircuitState::Open
    );
    assert_eq!(
        s.state.route(None).breaker().unwrap().state(),
        CircuitState::Closed
    );
    assert_eq!(call(&s.svc, get("/search")).await.status, 503);
    assert_eq!(server.hits(), 15);
    assert_eq!(
        counter(&s.metrics, "transitions", &["shop /checkout*", "open"]),
        1
    );
}

/// gRPC UNAVAILABLE in the trailers of a unary reply is retried; the good
/// reply reaches the client whole, trailers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_in_trailers_is_retried() {
    let server = FaultServer::start(Mode::GrpcUnavailableFirst(2)).await;
    let up = upstream(
        "catalog",
        &[server.addr],
        policy(
            r#"
            retry:
              attempts: 3
              backoff: {base: 1ms, max: 2ms, jitter: none}
              retryOn: [grpc-unavailable]
              budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
            "#,
        ),
        vec![],
    );
    // gRPC calls are POSTs: not retried unless the route allows it.
    let s = stack(&up, true);
    let mut req = get("/catalog.Catalog/Get");
    *req.method_mut() = Method::POST;
    let a = call(&s.svc, req).await;
    assert_eq!(a.grpc_status, Some(14), "{a:?}");
    assert_eq!(server.hits(), 1);
    let up2 = upstream(
        "catalog",
        &[server.addr],
        policy(
            r#"
            retry:
              attempts: 3
              backoff: {base: 1ms, max: 2ms, jitter: none}
              retryOn: [grpc-unavailable]
              budget: {ratio: 1.0, minPerSecond: 100, window: 10s}
              allowNonIdempotent: true
            "#,
        ),
        vec![],
    );
    server.set_mode(Mode::GrpcUnavailableFirst(server.hits() + 2));
    let before = server.hits();
    let s = stack(&up2, true);
    let mut req = get("/catalog.Catalog/Get");
    *req.method_mut() = Method::POST;
    let a = call(&s.svc, req).await;
    assert_eq!(a.grpc_status, Some(0), "{a:?}");
    assert_eq!(server.hits() - before, 3);
    assert_eq!(
        counter(&s.metrics, "retries", &["catalog", "grpc-unavailable"]),
        2
    );
}
