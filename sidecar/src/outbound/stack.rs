//! The outbound stack of one upstream, composed in this one place.
//!
//! A request routed to an upstream (by the outbound edge, which also turns
//! whatever error it ends with into the answer) flows top to bottom:
//!
//! ```text
//! by route           the first route whose match fits, else the upstream's policy
//! ── resilience (sidecar/src/resilience/), the route's own stack ──
//! fallback · request timeout · circuit breaker · bulkhead · retry(+per-try timeout)
//! ──
//! Attempt            balancer pick (avoiding tried endpoints), client span, send
//! ```
//!
//! Every layer fails with a `ProxyError`; nothing below the edge makes an
//! error response (the fallback's canned answer is a policy, not an error).

use std::sync::Arc;

use super::attempt::Attempt;
use super::route::select_route;
use crate::HttpService;
use crate::balance::EndpointSet;
use crate::client::HttpClient;
use crate::resilience::{self, UpstreamResilience};
use crate::trace::Telemetry;
use trellis_api::proxy::Upstream;

/// Everything an upstream's stack is built from. The stack is rebuilt when
/// the config changes; the endpoint set (and its latency state) survives.
pub struct UpstreamTarget<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub endpoints: &'a Arc<EndpointSet>,
    pub resilience: &'a UpstreamResilience,
    pub client: &'a HttpClient,
    pub telemetry: &'a Arc<Telemetry>,
}

pub fn build(t: UpstreamTarget<'_>) -> HttpService {
    // Outlier detection lives in the balancer: ejected endpoints are skipped
    // at every pick, and every attempt's outcome is reported to the detector.
    t.resilience.install(t.endpoints);

    let attempt = Attempt::new(
        &t.upstream.name,
        t.endpoints.clone(),
        t.client.clone(),
        t.telemetry.clone(),
    );
    let upstream = t.upstream.clone();
    // fallback · request timeout · circuit breaker · bulkhead · retry(per-try timeout)
    resilience::outbound_routes(t.resilience, attempt, move |req| {
        select_route(&upstream, req.method(), req.uri().path())
    })
}
