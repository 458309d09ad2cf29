//! Resilience: timeouts, retries, circuit breaking, outlier detection,
//! bulkheads, fallbacks (outbound) and rate/concurrency limits (inbound).
//!
//! One concern per module, each a tower layer with its own tests; this module
//! composes them — the only place that knows the order — and owns the state
//! that must outlive any one stack.
//!
//! # Outbound order (outermost first) and why
//!
//! ```text
//! fallback → request timeout → circuit breaker → bulkhead → retry → per-try timeout → attempt
//! ```
//!
//! * **fallback** is outermost so it sees every refusal of every layer below
//!   (open circuit, full bulkhead, spent budget). Every other error goes on
//!   up, typed, to the listener's edge, the one place errors become responses.
//! * **request timeout** bounds everything the caller waits for: queueing in
//!   the bulkhead, every attempt and every backoff. Its [`Deadline`] goes down
//!   as an extension so the breaker counts a cut call as a failure and the
//!   retry layer does not start a backoff it cannot finish.
//! * **circuit breaker** outside the bulkhead, so an open circuit rejects
//!   without taking a queue slot; outside the retries, so it judges what the
//!   caller got (a request saved by its retry is a success, and a failing
//!   request counts once, not once per attempt).
//! * **bulkhead** outside the retries: a request holds one slot across all its
//!   attempts, so retries cannot raise concurrency beyond `maxConcurrent`.
//! * **retry** re-invokes everything below per attempt, so each attempt is
//!   balanced afresh (avoiding endpoints already tried), reported against its
//!   own endpoint to outlier detection, and bounded by its own per-try timeout.
//!
//! # State
//!
//! Breakers, budgets, bulkheads and outlier detectors live in `Arc`s held by
//! [`UpstreamResilience`] (one per upstream, with one [`RouteResilience`] per
//! route). Building a stack only clones those `Arc`s, so the core may build
//! stacks per request or per connection; on config reload
//! [`UpstreamResilience::reload`] keeps every piece of state whose settings
//! did not change. A route shares the upstream's breaker, budget and bulkhead
//! unless its own settings for them differ.
//!
//! # Contract with the balancer below
//!
//! Through the hooks of [`crate::balance`]: the retry layer inserts one
//! [`TriedEndpoints`](crate::balance::TriedEndpoints) per request (shared by
//! its attempts) so each pick avoids endpoints already tried; the upstream's
//! [`OutlierDetector`] is the [`EndpointSet`]'s filter (skip ejected
//! endpoints) and outcome observer (see [`UpstreamResilience::install`]).

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod classify;
pub mod fallback;
pub mod outlier;
pub mod rate_limit;
mod replay;
pub mod retry;
pub mod timeout;
mod window;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::util::{BoxCloneSyncService, Oneshot, option_layer};
use tower::{Layer, Service, ServiceExt};
use trellis_api::crd::RouteMatch;
use trellis_api::proxy::{EffectivePolicy, InboundPolicy, Upstream};

use crate::HttpService;
use crate::balance::{EndpointFilter, EndpointSet, OutcomeObserver};
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;

pub use breaker::{CircuitBreaker, State as CircuitState};
pub use budget::RetryBudget;
pub use bulkhead::BulkheadState;
pub use outlier::OutlierDetector;
pub use rate_limit::InboundLimits;
pub use timeout::Deadline;

/// Boxes a service's future before an `async` block holds it: an `async`
/// block holding `S::Future` trips rustc's higher-ranked `Send` check on the
/// `dyn Error` inside [`Body`].
pub(crate) fn boxed<F>(fut: F) -> futures::future::BoxFuture<'static, F::Output>
where
    F: std::future::Future + Send + 'static,
{
    Box::pin(fut)
}

/// The resilience of one upstream route (or of the upstream itself): its
/// policy and the shared state its stacks use. Cheap to clone.
#[derive(Clone)]
pub struct RouteResilience {
    policy: Arc<EffectivePolicy>,
    breaker: Option<Arc<CircuitBreaker>>,
    budget: Option<Arc<RetryBudget>>,
    bulkhead: Option<Arc<BulkheadState>>,
    outlier: Option<Arc<OutlierDetector>>,
    layers: Layers,
}

/// Layers are built once per route (metric handles looked up once), then cloned per stack.
#[derive(Clone)]
struct Layers {
    fallback: fallback::FallbackLayer,
    request_timeout: timeout::RequestTimeoutLayer,
    breaker: Option<breaker::CircuitBreakerLayer>,
    bulkhead: Option<bulkhead::BulkheadLayer>,
    retry: retry::RetryLayer,
    per_try: timeout::PerTryTimeoutLayer,
}

/// What the state-sharing tests look at.
#[cfg(test)]
impl RouteResilience {
    fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    fn outlier(&self) -> Option<&Arc<OutlierDetector>> {
        self.outlier.as_ref()
    }
}

/// The resilience state of one upstream: the service-level route and one per
/// configured route, in the config's order.
pub struct UpstreamResilience {
    metrics: Metrics,
    service: RouteResilience,
    routes: Vec<(RouteMatch, RouteResilience)>,
}

impl UpstreamResilience {
    pub fn new(upstream: &Upstream, metrics: &Metrics) -> Self {
        Self::build(upstream, metrics, None)
    }

    /// The state for a changed config of the same upstream: breakers,
    /// budgets, bulkheads and outlier state carry over where their settings
    /// are unchanged.
    pub fn reload(&self, upstream: &Upstream) -> Self {
        Self::build(upstream, &self.metrics, Some(self))
    }

    /// The route at `index` in `Upstream::routes`, or the service-level
    /// one for `None` or an unknown index.
    #[cfg(test)]
    fn route(&self, index: Option<usize>) -> &RouteResilience {
        index
            .and_then(|i| self.routes.get(i))
            .map_or(&self.service, |(_, r)| r)
    }

    /// The upstream's outlier detector, for its balancer.
    pub fn outlier(&self) -> Option<&Arc<OutlierDetector>> {
        self.service.outlier.as_ref()
    }

    /// Makes the outlier detector (or none, if the policy has no outlier
    /// detection) the filter and outcome observer of the upstream's endpoints.
    pub fn install(&self, endpoints: &EndpointSet) {
        let detector = self.outlier();
        endpoints.set_filter(detector.map(|d| d.clone() as Arc<dyn EndpointFilter>));
        endpoints.set_observer(detector.map(|d| d.clone() as Arc<dyn OutcomeObserver>));
    }

    fn build(upstream: &Upstream, metrics: &Metrics, prev: Option<&Self>) -> Self {
        let peer: Arc<str> = upstream.name.as_str().into();
        let prev_service = prev.map(|p| &p.service);
        let policy = &upstream.policy;
        let kept = prev_service.and_then(|p| {
            (p.policy.outlier_detection == policy.outlier_detection)
                .then(|| p.outlier.clone())
                .flatten()
        });
        let outlier = kept.or_else(|| {
            policy
                .outlier_detection
                .as_ref()
                .map(|o| Arc::new(OutlierDetector::new(o, &peer)))
        });
        let service = build_route(
            policy,
            &peer,
            &peer,
            metrics,
            prev_service,
            None,
            outlier.clone(),
        );
        let routes = upstream
            .routes
            .iter()
            .map(|r| {
                let prev_route = prev.and_then(|p| {
                    p.routes
                        .iter()
                        .find(|(m, _)| *m == r.route_match)
                        .map(|(_, rr)| (rr, &p.service))
                });
                let label = route_label(&peer, &r.route_match);
                let built = build_route(
                    &r.policy,
                    &peer,
                    &label,
                    metrics,
                    prev_route.map(|(rr, _)| rr),
                    Some((&service, prev_service)),
                    outlier.clone(),
                );
                (r.route_match.clone(), built)
            })
            .collect();
        UpstreamResilience {
            metrics: metrics.clone(),
            service,
            routes,
        }
    }
}

/// `peer` label of a route's own breaker: `orders POST /api/v1/orders*`.
fn route_label(peer: &str, m: &RouteMatch) -> String {
    let mut label = peer.to_string();
    if !m.methods.is_empty() {
        label.push(' ');
        let methods: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        label.push_str(&methods.join(","));
    }
    if let Some(p) = &m.path {
        label.push(' ');
        label.push_str(p);
    } else if let Some(p) = &m.path_prefix {
        label.push(' ');
        label.push_str(p);
        label.push('*');
    }
    label
}

/// One piece of state for a route: the service-level one when the settings
/// are the same, else the route's previous one when unchanged (and its own),
/// else a new one.
fn pick<C: PartialEq, T>(
    setting: Option<&C>,
    get_setting: impl Fn(&EffectivePolicy) -> Option<&C>,
    get_state: impl Fn(&RouteResilience) -> Option<&Arc<T>>,
    prev: Option<&RouteResilience>,
    service: Option<(&RouteResilience, Option<&RouteResilience>)>,
    make: impl FnOnce(&C) -> T,
) -> Option<Arc<T>> {
    let setting = setting?;
    if let Some((svc, _)) = service
        && get_setting(&svc.policy) == Some(setting)
    {
        return get_state(svc).cloned();
    }
    if let Some(prev) = prev
        && get_setting(&prev.policy) == Some(setting)
        && let Some(state) = get_state(prev)
    {
        // A route's previous state shared with the old service level is not its own.
        let shared_with_old_service = service
            .and_then(|(_, old)| old)
            .and_then(&get_state)
            .is_some_and(|s| Arc::ptr_eq(s, state));
        if !shared_with_old_service {
            return Some(state.clone());
        }
    }
    Some(Arc::new(make(setting)))
}

fn build_route(
    policy: &EffectivePolicy,
    peer: &str,
    label: &str,
    metrics: &Metrics,
    prev: Option<&RouteResilience>,
    service: Option<(&RouteResilience, Option<&RouteResilience>)>,
    outlier: Option<Arc<OutlierDetector>>,
) -> RouteResilience {
    let breaker = pick(
        policy.circuit_breaker.as_ref(),
        |p| p.circuit_breaker.as_ref(),
        |r| r.breaker.as_ref(),
        prev,
        service,
        |c| CircuitBreaker::new(c, label, metrics),
    );
    let budget = pick(
        policy.retry.as_ref().map(|r| &r.budget),
        |p| p.retry.as_ref().map(|r| &r.budget),
        |r| r.budget.as_ref(),
        prev,
        service,
        RetryBudget::new,
    );
    let bulkhead = pick(
        policy.bulkhead.as_ref(),
        |p| p.bulkhead.as_ref(),
        |r| r.bulkhead.as_ref(),
        prev,
        service,
        |b| BulkheadState::new(b, peer, metrics),
    );
    let layers = Layers {
        fallback: fallback::FallbackLayer::new(policy.fallback.as_ref(), peer, metrics),
        request_timeout: timeout::RequestTimeoutLayer::new(
            policy.timeout.request.map(|d| d.as_std()),
        ),
        breaker: breaker.clone().map(breaker::CircuitBreakerLayer::new),
        bulkhead: bulkhead.clone().map(bulkhead::BulkheadLayer::new),
        retry: retry::RetryLayer::new(policy.retry.as_ref(), budget.clone(), peer, metrics),
        per_try: timeout::PerTryTimeoutLayer::new(
            policy
                .retry
                .as_ref()
                .and_then(|r| r.per_try_timeout)
                .map(|d| d.as_std()),
        ),
    };
    RouteResilience {
        policy: Arc::new(policy.clone()),
        breaker,
        budget,
        bulkhead,
        outlier,
        layers,
    }
}

/// The outbound stack of one route over `attempt` — the core's "pick an
/// endpoint, connect, send", called once per attempt.
pub fn outbound<S>(route: &RouteResilience, attempt: S) -> HttpService
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let l = &route.layers;
    let svc = l.per_try.layer(attempt);
    let svc = l.retry.layer(svc);
    let svc = option_layer(l.bulkhead.clone()).layer(svc);
    let svc = option_layer(l.breaker.clone()).layer(svc);
    let svc = l.request_timeout.layer(svc);
    let svc = l.fallback.layer(svc);
    BoxCloneSyncService::new(svc)
}

/// The outbound stacks of every route of an upstream over one `attempt`
/// service, dispatching each request by `select` (the index into
/// `Upstream::routes` its route matched, `None` for the upstream's own
/// policy) — e.g. `|req| req.extensions().get::<RoutePolicy>().and_then(|r| r.route)`.
pub fn outbound_routes<S, F>(u: &UpstreamResilience, attempt: S, select: F) -> HttpService
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    F: Fn(&Request<Body>) -> Option<usize> + Clone + Send + Sync + 'static,
{
    let stacks = std::iter::once(&u.service)
        .chain(u.routes.iter().map(|(_, r)| r))
        .map(|r| outbound(r, attempt.clone()))
        .collect();
    BoxCloneSyncService::new(ByRoute { stacks, select })
}

#[derive(Clone)]
struct ByRoute<F> {
    /// The upstream's stack, then one per route.
    stacks: Arc<[HttpService]>,
    select: F,
}

impl<F> Service<Request<Body>> for ByRoute<F>
where
    F: Fn(&Request<Body>) -> Option<usize>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Oneshot<HttpService, Request<Body>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Each call readies its own clone of the route's stack.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let i = (self.select)(&req)
            .map(|i| i + 1)
            .filter(|i| *i < self.stacks.len())
            .unwrap_or(0);
        self.stacks[i].clone().oneshot(req)
    }
}

/// The inbound limits of a sidecar; kept across reloads while unchanged.
pub struct InboundResilience {
    policy: InboundPolicy,
    limits: Arc<InboundLimits>,
}

impl InboundResilience {
    pub fn new(policy: &InboundPolicy, metrics: &Metrics) -> Self {
        InboundResilience {
            policy: policy.clone(),
            limits: Arc::new(InboundLimits::new(policy, metrics)),
        }
    }

    pub fn reload(&self, policy: &InboundPolicy, metrics: &Metrics) -> Self {
        if *policy == self.policy {
            InboundResilience {
                policy: policy.clone(),
                limits: self.limits.clone(),
            }
        } else {
            Self::new(policy, metrics)
        }
    }
}

/// The inbound stack over `inner` (the forward to the app): rate limit, then
/// concurrency limit, so a flood over the rate never takes a slot.
pub fn inbound<S>(state: &InboundResilience, inner: S) -> HttpService
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(rate_limit::InboundLimitLayer::new(state.limits.clone()).layer(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::Bounded;
    use trellis_api::crd::Method;
    use trellis_api::proxy::{self, Discovery, Route};

    fn breaker_cfg(threshold: u32) -> proxy::CircuitBreaker {
        proxy::CircuitBreaker {
            failure_rate_threshold: Bounded::new(threshold).unwrap(),
            minimum_requests: Bounded::new_const(10),
            window: ApiDuration::from_secs(10),
            consecutive_failures: Bounded::new_const(5),
            open_duration: ApiDuration::from_secs(5),
            max_open_duration: ApiDuration::from_secs(60),
            half_open_requests: Bounded::new_const(1),
            slow_call: None,
        }
    }

    fn upstream(route_threshold: u32) -> Upstream {
        let policy = EffectivePolicy {
            circuit_breaker: Some(breaker_cfg(50)),
            outlier_detection: Some(proxy::OutlierDetection {
                consecutive_failures: Bounded::new_const(5),
                base_ejection: ApiDuration::from_secs(30),
                max_ejection_percent: Bounded::new_const(50),
            }),
            ..Default::default()
        };
        let route = |prefix: &str, threshold| Route {
            route_match: RouteMatch {
                path_prefix: Some(prefix.into()),
                path: None,
                methods: vec![Method::Post],
            },
            policy: EffectivePolicy {
                circuit_breaker: Some(breaker_cfg(threshold)),
                ..policy.clone()
            },
        };
        Upstream {
            name: "payments".into(),
            authorities: vec!["payments".into()],
            discovery: Discovery::Static { addresses: vec![] },
            policy: policy.clone(),
            routes: vec![route("/same", 50), route("/own", route_threshold)],
            sources: vec![],
        }
    }

    #[test]
    fn routes_share_state_unless_their_settings_differ() {
        let m = Metrics::new();
        let u = UpstreamResilience::new(&upstream(90), &m);
        let svc = u.route(None).breaker().unwrap();
        assert!(Arc::ptr_eq(svc, u.route(Some(0)).breaker().unwrap()));
        assert!(!Arc::ptr_eq(svc, u.route(Some(1)).breaker().unwrap()));
        assert!(Arc::ptr_eq(svc, u.route(Some(7)).breaker().unwrap()));
        // Every route uses the upstream's outlier detector.
        let o = u.outlier().unwrap();
        assert!(Arc::ptr_eq(o, u.route(Some(1)).outlier().unwrap()));
        // The route's own breaker is visible under its own label.
        assert!(m.render().contains(r#"peer="payments POST /own*""#));
    }

    #[test]
    fn reload_keeps_unchanged_state_and_replaces_changed() {
        let m = Metrics::new();
        let u = UpstreamResilience::new(&upstream(90), &m);
        let same = u.reload(&upstream(90));
        for i in [None, Some(0), Some(1)] {
            assert!(Arc::ptr_eq(
                u.route(i).breaker().unwrap(),
                same.route(i).breaker().unwrap()
            ));
        }
        assert!(Arc::ptr_eq(u.outlier().unwrap(), same.outlier().unwrap()));
        let changed = same.reload(&upstream(70));
        assert!(Arc::ptr_eq(
            same.route(None).breaker().unwrap(),
            changed.route(None).breaker().unwrap()
        ));
        assert!(!Arc::ptr_eq(
            same.route(Some(1)).breaker().unwrap(),
            changed.route(Some(1)).breaker().unwrap()
        ));
        // A route whose settings become the upstream's shares the upstream's breaker.
        let merged = changed.reload(&upstream(50));
        assert!(Arc::ptr_eq(
            merged.route(None).breaker().unwrap(),
            merged.route(Some(1)).breaker().unwrap()
        ));
    }
}
