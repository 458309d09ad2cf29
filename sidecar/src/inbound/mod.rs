//! The inbound side: requests from other sidecars (and the kubelet's probes)
//! to the app behind this one. Every request takes the one inbound stack.

pub mod stack;

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use crate::body::Body;
use crate::edge::{Route, Router};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::observe::PeerMetrics;
use crate::published::View;
use crate::trace::Remote;
use crate::{Direction, HttpService};

/// The `peer` label of inbound metrics.
pub const PEER: &str = "inbound";

/// Hands every request to the inbound stack in effect.
pub struct InboundRouter {
    stack: View<HttpService>,
    metrics: Arc<PeerMetrics>,
}

impl InboundRouter {
    pub fn new(stack: View<HttpService>, metrics: &Metrics) -> Self {
        InboundRouter {
            stack,
            metrics: Arc::new(PeerMetrics::new(metrics, Direction::Inbound, PEER)),
        }
    }
}

impl Router for InboundRouter {
    fn route(&self, req: &mut Request<Body>, remote: SocketAddr) -> Result<Route, ProxyError> {
        // The server span names the caller.
        req.extensions_mut().insert(Remote(remote));
        Ok(Route {
            stack: (**self.stack.load()).clone(),
            metrics: self.metrics.clone(),
        })
    }

    fn unrouted(&self) -> &PeerMetrics {
        &self.metrics
    }
}
