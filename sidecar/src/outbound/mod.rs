//! The outbound side: the app's HTTP proxy. A request is routed to an
//! upstream by its authority (absolute-form URI or `:authority` first, else
//! `Host`; port and case ignored) and handed to that upstream's stack.

pub mod attempt;
mod gauges;
pub mod route;
pub mod stack;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use crate::balance::EndpointSet;
use crate::body::Body;
use crate::client::{ClientSettings, HttpClient};
use crate::discovery::{self, DiscoveryTask, KubeClient};
use crate::edge::{Route, Router};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::observe::PeerMetrics;
use crate::published::View;
use crate::resilience::UpstreamResilience;
use crate::trace::Telemetry;
use crate::{Direction, HttpService};
use trellis_api::proxy::{HttpSettings, Upstream};

pub use gauges::EndpointGauges;
pub use route::select_route;

/// The `peer` label of requests no upstream took (unknown authority, loops…).
pub const UNROUTED_PEER: &str = "unknown";

/// One upstream as currently configured.
pub struct UpstreamState {
    pub config: Arc<Upstream>,
    pub endpoints: Arc<EndpointSet>,
    client: HttpClient,
    client_settings: ClientSettings,
    /// Breakers, budgets, bulkheads and outlier state; carried across reloads.
    resilience: Arc<UpstreamResilience>,
    /// Request metrics of this peer, kept across reloads (their children are cached).
    metrics: Arc<PeerMetrics>,
    stack: HttpService,
    _discovery: Arc<DiscoveryTask>,
}

/// What building a route table needs besides the config.
pub struct BuildContext<'a> {
    pub metrics: &'a Metrics,
    pub telemetry: &'a Arc<Telemetry>,
    pub kube: &'a KubeClient,
    pub http: &'a HttpSettings,
    /// Serving threads, each with its own connection pools.
    pub lanes: usize,
}

/// Upstreams by name and by authority; replaced whole on reload.
#[derive(Default)]
pub struct RouteTable {
    upstreams: BTreeMap<String, Arc<UpstreamState>>,
    hosts: HashMap<String, Arc<UpstreamState>>,
}

impl RouteTable {
    /// Builds the table for `upstreams`, reusing from `previous` what did not
    /// change: an upstream with the same discovery keeps its endpoint set
    /// (and latency estimates) and discovery task; the same timeouts keep
    /// its connection pools. Stacks are always rebuilt from the new policy.
    pub fn build(upstreams: &[Upstream], previous: &RouteTable, cx: &BuildContext<'_>) -> Self {
        let mut table = RouteTable::default();
        for up in upstreams {
            let old = previous.upstreams.get(&up.name);
            let (endpoints, disc) = match old {
                Some(o) if o.config.discovery == up.discovery => {
                    (o.endpoints.clone(), o._discovery.clone())
                }
                _ => {
                    let set = Arc::new(EndpointSet::new(up.name.clone()));
                    let task = discovery::start(&up.discovery, set.clone(), cx.kube);
                    (set, Arc::new(task))
                }
            };
            let settings = ClientSettings::new(
                cx.http,
                up.policy.timeout.connect.as_std(),
                up.policy.timeout.idle.as_std(),
            );
            let client = match old {
                Some(o) if o.client_settings == settings => o.client.clone(),
                _ => HttpClient::new(settings, cx.lanes),
            };
            let resilience = Arc::new(match old {
                Some(o) => o.resilience.reload(up),
                None => UpstreamResilience::new(up, cx.metrics),
            });
            let metrics = match old {
                Some(o) => o.metrics.clone(),
                None => Arc::new(PeerMetrics::new(cx.metrics, Direction::Outbound, &up.name)),
            };
            let config = Arc::new(up.clone());
            let stack = stack::build(stack::UpstreamTarget {
                upstream: &config,
                endpoints: &endpoints,
                resilience: &resilience,
                client: &client,
                telemetry: cx.telemetry,
            });
            let state = Arc::new(UpstreamState {
                config,
                endpoints,
                client,
                client_settings: settings,
                resilience,
                metrics,
                stack,
                _discovery: disc,
            });
            for host in &up.authorities {
                table
                    .hosts
                    .insert(normalize_host(host).to_string(), state.clone());
            }
            table.upstreams.insert(up.name.clone(), state);
        }
        table
    }

    /// The upstream serving `host` (port and case ignored).
    pub fn lookup(&self, host: &str) -> Option<&Arc<UpstreamState>> {
        match normalized_already(host) {
            Some(h) => self.hosts.get(h),
            None => self.hosts.get(normalize_host(host).as_str()),
        }
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<UpstreamState>> {
        self.upstreams.values()
    }

    /// Ready once every upstream's discovery has answered at least once.
    pub fn is_resolved(&self) -> bool {
        self.upstreams().all(|u| u.endpoints.is_resolved())
    }
}

/// `Orders.Shop:8080` → `orders.shop`; `[::1]:80` → `::1`; a trailing dot goes.
fn normalize_host(authority: &str) -> String {
    let host = match authority.parse::<http::uri::Authority>() {
        Ok(a) => a
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        Err(_) => authority.to_string(),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// What [`normalize_host`] returns for the common authority that needs no
/// rewriting beyond dropping a numeric port and trailing dots (lowercase
/// name or IPv4, no userinfo, no brackets), without allocating; `None`
/// for anything else.
fn normalized_already(authority: &str) -> Option<&str> {
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let plain = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-';
    if host.is_empty() || !host.bytes().all(plain) {
        return None;
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    Some(host.trim_end_matches('.'))
}

/// The authority a request is addressed to.
fn target_authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Routes the outbound listener's requests by authority.
pub struct OutboundRouter {
    table: View<RouteTable>,
    unrouted: PeerMetrics,
}

impl OutboundRouter {
    pub fn new(table: View<RouteTable>, metrics: &Metrics) -> Self {
        OutboundRouter {
            table,
            unrouted: PeerMetrics::new(metrics, Direction::Outbound, UNROUTED_PEER),
        }
    }
}

impl Router for OutboundRouter {
    fn route(&self, req: &mut Request<Body>, _remote: SocketAddr) -> Result<Route, ProxyError> {
        let authority = target_authority(req).ok_or(ProxyError::UnknownUpstream)?;
        let table = self.table.load();
        let upstream = table.lookup(authority).ok_or(ProxyError::UnknownUpstream)?;
        Ok(Route {
            stack: upstream.stack.clone(),
            metrics: upstream.metrics.clone(),
        })
    }

    fn unrouted(&self) -> &PeerMetrics {
        &self.unrouted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Orders.Shop:8080"), "orders.shop");
        assert_eq!(
            normalize_host("orders.shop.svc.cluster.local."),
            "orders.shop.svc.cluster.local"
        );
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("orders"), "orders");
    }

    #[test]
    fn fast_path_agrees_with_normalize_host() {
        for a in [
            "orders",
            "orders:80",
            "orders.shop.svc.cluster.local.",
            "orders.shop.:8080",
            "127.0.0.1",
            "127.0.0.1:41234",
            "a-b.c",
            "...",
        ] {
            assert_eq!(
                normalized_already(a),
                Some(normalize_host(a).as_str()),
                "{a}"
            );
        }
        for a in [
            "Orders", "[::1]:80", "u@orders", "orders:", "orders:x", "", "a:1:2",
        ] {
            assert_eq!(normalized_already(a), None, "{a}");
        }
    }
}
