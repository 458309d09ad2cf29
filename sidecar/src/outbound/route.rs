//! Which route of an upstream a request takes: the first whose match fits
//! (routes are sorted most specific first by the operator, and the rule is
//! [`trellis_api::crd::RouteMatch::matches`], the one the webhook validates
//! with), else the upstream's own policy.

use trellis_api::proxy::Upstream;

/// The index into `upstream.routes` of the route `method path` takes;
/// `None`: the upstream's own policy.
pub fn select_route(upstream: &Upstream, method: &http::Method, path: &str) -> Option<usize> {
    upstream
        .routes
        .iter()
        .position(|r| r.route_match.matches(method.as_str(), path))
}
