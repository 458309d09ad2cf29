//! Policy resolution: oldest wins, conflicts name the winner, routes merge field by field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use trellis_api::Duration;
use trellis_api::crd::{Method, ResiliencePolicy, RouteMatch};
use trellis_api::parse::from_yaml;
use trellis_api::resolve::resolve;

fn policy(name: &str, created: &str, spec: &str) -> ResiliencePolicy {
    let text = format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    );
    let mut p: ResiliencePolicy = from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
    p.metadata.creation_timestamp = Some(Time(created.parse::<Timestamp>().unwrap()));
    p
}

const OLD: &str = "2026-01-01T00:00:00Z";
const NEW: &str = "2026-02-01T00:00:00Z";

#[test]
fn the_oldest_policy_wins_and_the_newer_is_told_who_won() {
    let older = policy(
        "payments-a",
        OLD,
        "  targetRef: {kind: MeshService, name: payments}\n  retry: {attempts: 2}\n",
    );
    let newer = policy(
        "payments-b",
        NEW,
        "  targetRef: {kind: MeshService, name: payments}\n  retry: {attempts: 5}\n",
    );
    // Input order must not matter.
    for input in [
        vec![older.clone(), newer.clone()],
        vec![newer.clone(), older.clone()],
    ] {
        let res = resolve(&input);
        let (effective, _) = res.effective("shop", "payments");
        assert_eq!(effective.retry.unwrap().attempts.get(), 2);
        assert_eq!(res.conflicts().len(), 1);
        let c = &res.conflicts()[0];
        assert_eq!(
            (c.policy.as_str(), c.winner.as_str(), c.target.as_str()),
            ("payments-b", "payments-a", "payments")
        );
        assert!(c.to_string().contains("older policy payments-a"), "{c}");
        assert!(res.is_in_effect("shop", "payments-a"));
        assert!(!res.is_in_effect("shop", "payments-b"));
        assert_eq!(res.policies_for("shop", "payments"), ["payments-a"]);
    }
}

#[test]
fn policies_for_different_slots_do_not_conflict() {
    let service = policy(
        "svc",
        OLD,
        "  targetRef: {kind: MeshService, name: orders}\n  timeout: {request: 5s}\n",
    );
    let route = policy(
        "route",
        NEW,
        "  targetRef: {kind: MeshService, name: orders}\n  routes:\n  - match: {pathPrefix: /slow}\n    timeout: {request: 30s}\n",
    );
    let res = resolve(&[service, route]);
    assert!(res.conflicts().is_empty());
    assert_eq!(res.policies_for("shop", "orders"), ["route", "svc"]);
    let (base, routes) = res.effective("shop", "orders");
    assert_eq!(base.timeout.request, Some(Duration::from_secs(5)));
    assert_eq!(
        routes[0].policy.timeout.request,
        Some(Duration::from_secs(30))
    );
}

#[test]
fn same_route_in_two_policies_conflicts_on_that_route() {
    let spec = "  targetRef: {kind: MeshService, name: orders}\n  routes:\n  - match: {pathPrefix: /a}\n    retry: {attempts: 1}\n";
    let res = resolve(&[policy("first", OLD, spec), policy("second", NEW, spec)]);
    assert_eq!(res.conflicts().len(), 1);
    let c = &res.conflicts()[0];
    assert_eq!(c.winner, "first");
    assert_eq!(c.route.as_ref().unwrap().path_prefix.as_deref(), Some("/a"));
}

#[test]
fn route_overrides_merge_field_by_field() {
    let p = policy(
        "payments",
        OLD,
        r#"  targetRef: {kind: MeshService, name: payments}
  timeout: {request: 2s, connect: 300ms}
  retry:
    attempts: 3
    perTryTimeout: 500ms
    backoff: {base: 50ms, max: 2s, jitter: equal}
    retryOn: ["503"]
  circuitBreaker: {failureRateThreshold: 40, openDuration: 10s}
  routes:
  - match: {pathPrefix: /api/v1/payments, methods: [POST]}
    retry: {attempts: 1}
    circuitBreaker: {failureRateThreshold: 20}
  - match: {path: /api/v1/payments/health}
    timeout: {request: 100ms}
"#,
    );
    let (base, routes) = resolve(&[p]).effective("shop", "payments");
    assert_eq!(routes.len(), 2);
    // The exact path is more specific than the prefix: it is matched first.
    assert_eq!(
        routes[0].route_match.path.as_deref(),
        Some("/api/v1/payments/health")
    );
    let post = &routes[1];
    assert_eq!(
        post.route_match,
        RouteMatch {
            path_prefix: Some("/api/v1/payments".into()),
            path: None,
            methods: vec![Method::Post]
        }
    );
    let retry = post.policy.retry.as_ref().unwrap();
    let base_retry = base.retry.as_ref().unwrap();
    assert_eq!(retry.attempts.get(), 1, "overridden");
    assert_eq!(
        retry.per_try_timeout,
        Some(Duration::from_millis(500)),
        "inherited"
    );
    assert_eq!(retry.backoff, base_retry.backoff, "inherited");
    assert_eq!(retry.retry_on, base_retry.retry_on, "inherited");
    let cb = post.policy.circuit_breaker.as_ref().unwrap();
    assert_eq!(cb.failure_rate_threshold.get(), 20, "overridden");
    assert_eq!(cb.open_duration, Duration::from_secs(10), "inherited");
    assert_eq!(post.policy.timeout, base.timeout, "not overridden at all");
    let health = &routes[0].policy;
    assert_eq!(health.timeout.request, Some(Duration::from_millis(100)));
    assert_eq!(
        health.timeout.connect,
        Duration::from_millis(300),
        "inherited within the block"
    );
}

#[test]
fn defaults_fill_what_a_policy_leaves_unset() {
    let p = policy(
        "p",
        OLD,
        "  targetRef: {kind: MeshService, name: x}\n  retry: {}\n  circuitBreaker: {openDuration: 90s}\n  inbound: {rateLimit: {requestsPerSecond: 50}}\n",
    );
    let res = resolve(&[p]);
    let (base, _) = res.effective("shop", "x");
    let retry = base.retry.unwrap();
    assert_eq!(retry.attempts.get(), 3);
    assert_eq!(retry.budget.ratio.get(), 0.2);
    let cb = base.circuit_breaker.unwrap();
    // maxOpenDuration never ends below openDuration.
    assert_eq!(cb.max_open_duration, Duration::from_secs(90));
    assert!(base.bulkhead.is_none() && base.fallback.is_none() && base.outlier_detection.is_none());
    let inbound = res.inbound("shop", "x");
    let rl = inbound.rate_limit.unwrap();
    assert_eq!((rl.requests_per_second.get(), rl.burst.get()), (50, 50));
    // A service nobody targets gets the plain defaults: one try, no breaker.
    let (none, routes) = res.effective("shop", "nobody");
    assert!(none.retry.is_none() && none.circuit_breaker.is_none() && routes.is_empty());
}
