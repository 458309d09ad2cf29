//! The outbound stack of one upstream, composed in this one place.
//!
//! A request routed to an upstream flows top to bottom:
//!
//! ```text
//! Observe            metrics: one count + latency per request, final outcome
//! ErrorResponses     errors below become responses with x-trellis-error
//! SelectRoute        RoutePolicy extension: the route's effective policy
//! ── resilience (sidecar/src/resilience/), the route's own stack ──
//! fallback · request timeout · circuit breaker · bulkhead · retry(+per-try timeout)
//! ──
//! Attempt            balancer pick (avoiding tried endpoints), client span, send
//! ```
//!
//! Error types: `Attempt` fails with `BoxError` (a `ProxyError`, or the
//! client's error whose source chain tells connect failures, resets and h2
//! REFUSED_STREAM apart). Layers in the slots may fail with `ProxyError` or
//! `BoxError`; `ErrorResponses` takes anything `Into<BoxError>`.
//!
//! Per-request policy: read `req.extensions().get::<RoutePolicy>()`; the
//! upstream-wide policy (what a breaker or bulkhead shared by all routes is
//! built from) is `target.upstream.policy`.

use std::sync::Arc;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::attempt::Attempt;
use super::route::{RoutePolicy, RoutePolicyLayer};
use crate::balance::EndpointSet;
use crate::client::HttpClient;
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::resilience::{self, UpstreamResilience};
use crate::respond::ErrorResponsesLayer;
use crate::trace::Telemetry;
use crate::{Direction, HttpService};
use trellis_api::proxy::Upstream;

/// Everything an upstream's stack is built from. The stack is rebuilt when
/// the config changes; the endpoint set (and its latency state) survives.
pub struct UpstreamTarget<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub endpoints: &'a Arc<EndpointSet>,
    pub resilience: &'a UpstreamResilience,
    pub client: &'a HttpClient,
    pub metrics: &'a Metrics,
    pub telemetry: &'a Arc<Telemetry>,
}

pub fn build(t: UpstreamTarget<'_>) -> HttpService {
    let peer = t.upstream.name.as_str();

    // Outlier detection lives in the balancer: ejected endpoints are skipped
    // at every pick, and every attempt's outcome is reported to the detector.
    t.resilience.install(t.endpoints);

    let attempt = Attempt::new(
        peer,
        t.endpoints.clone(),
        t.client.clone(),
        t.telemetry.clone(),
    );
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(
            t.metrics.clone(),
            Direction::Outbound,
            peer,
        ))
        .layer(ErrorResponsesLayer)
        .layer(RoutePolicyLayer::new(t.upstream.clone()))
        // fallback · request timeout · circuit breaker · bulkhead · retry(per-try timeout)
        .service(resilience::outbound_routes(t.resilience, attempt, |req| {
            req.extensions().get::<RoutePolicy>().and_then(|r| r.route)
        }));
    BoxCloneSyncService::new(svc)
}
