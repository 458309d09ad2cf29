//! Which policy applies to one request: the first of the upstream's routes
//! whose match fits (routes are sorted most specific first by the operator),
//! else the upstream's own policy.
//!
//! The choice travels down the stack as the [`RoutePolicy`] request
//! extension, so every resilience layer reads the same per-request policy.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::body::Body;
use trellis_api::crd::RouteMatch;
use trellis_api::proxy::{EffectivePolicy, Upstream};

/// The effective policy of `method path` on `upstream`; the index is the
/// matching route's position in `upstream.routes` (`None`: the upstream policy).
pub fn select_route<'a>(
    upstream: &'a Upstream,
    method: &http::Method,
    path: &str,
) -> (Option<usize>, &'a EffectivePolicy) {
    upstream
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| route_matches(&r.route_match, method, path))
        .map_or((None, &upstream.policy), |(i, r)| (Some(i), &r.policy))
}

/// Every condition given must hold; a prefix matches whole path segments
/// (`/api` matches `/api` and `/api/x`, not `/apix`).
pub fn route_matches(m: &RouteMatch, method: &http::Method, path: &str) -> bool {
    if let Some(exact) = &m.path
        && path != exact
    {
        return false;
    }
    if let Some(prefix) = &m.path_prefix {
        let ok = path == prefix
            || (path.starts_with(prefix.as_str())
                && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')));
        if !ok {
            return false;
        }
    }
    m.methods.is_empty() || m.methods.iter().any(|x| x.as_str() == method.as_str())
}

/// Request extension: the policy selected for this request.
#[derive(Clone, Debug)]
pub struct RoutePolicy {
    /// Index into `Upstream.routes`; `None` for the upstream's own policy.
    pub route: Option<usize>,
    pub policy: Arc<EffectivePolicy>,
}

/// Inserts [`RoutePolicy`] into each request.
#[derive(Clone, Debug)]
pub struct RoutePolicyLayer {
    /// The upstream policy then each route's, in `Upstream.routes` order.
    upstream: Arc<Upstream>,
    policies: Arc<[Arc<EffectivePolicy>]>,
}

impl RoutePolicyLayer {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        let policies = std::iter::once(&upstream.policy)
            .chain(upstream.routes.iter().map(|r| &r.policy))
            .map(|p| Arc::new(p.clone()))
            .collect();
        RoutePolicyLayer { upstream, policies }
    }

    fn policy_for<B>(&self, req: &Request<B>) -> RoutePolicy {
        let (route, _) = select_route(&self.upstream, req.method(), req.uri().path());
        let policy = self.policies[route.map_or(0, |i| i + 1)].clone();
        RoutePolicy { route, policy }
    }
}

impl<S> Layer<S> for RoutePolicyLayer {
    type Service = SelectRoute<S>;
    fn layer(&self, inner: S) -> SelectRoute<S> {
        SelectRoute {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SelectRoute<S> {
    inner: S,
    layer: RoutePolicyLayer,
}

impl<S: Service<Request<Body>>> Service<Request<Body>> for SelectRoute<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        let selected = self.layer.policy_for(&req);
        req.extensions_mut().insert(selected);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::crd::Method;

    fn m(prefix: Option<&str>, path: Option<&str>, methods: Vec<Method>) -> RouteMatch {
        RouteMatch {
            path_prefix: prefix.map(str::to_string),
            path: path.map(str::to_string),
            methods,
        }
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let r = m(Some("/api/v1"), None, vec![]);
        assert!(route_matches(&r, &http::Method::GET, "/api/v1"));
        assert!(route_matches(&r, &http::Method::GET, "/api/v1/x"));
        assert!(!route_matches(&r, &http::Method::GET, "/api/v1x"));
        assert!(!route_matches(&r, &http::Method::GET, "/api"));
        let slash = m(Some("/api/"), None, vec![]);
        assert!(route_matches(&slash, &http::Method::GET, "/api/x"));
    }

    #[test]
    fn exact_path_and_methods() {
        let r = m(None, Some("/pay"), vec![Method::Post]);
        assert!(route_matches(&r, &http::Method::POST, "/pay"));
        assert!(!route_matches(&r, &http::Method::GET, "/pay"));
        assert!(!route_matches(&r, &http::Method::POST, "/pay/1"));
    }
}
