//! The inbound stack, composed in this one place: requests from other
//! sidecars (and the kubelet's probes) to the app.
//!
//! ```text
//! Observe            metrics, peer="inbound"
//! ServerSpan         server span; its context is what the app sees as parent
//! ErrorResponses     errors below become responses with x-trellis-error
//! ── resilience (sidecar/src/resilience/) ──
//! rate limit · concurrency limit
//! ──
//! ForwardToApp       pooled connection to app.address (HTTP/2 for gRPC apps)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::body::{Body, BoxError};
use crate::client::{HttpClient, Wire};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::resilience::{self, InboundResilience};
use crate::respond::ErrorResponsesLayer;
use crate::trace::{ServerSpanLayer, Telemetry};
use crate::{Direction, HttpService};
use trellis_api::crd::Protocol;
use trellis_api::proxy::App;

/// The `peer` label of inbound metrics.
pub const PEER: &str = "inbound";

pub struct InboundTarget<'a> {
    pub app: &'a App,
    /// Rate and concurrency limits, kept across reloads while unchanged.
    pub limits: &'a InboundResilience,
    pub client: &'a HttpClient,
    pub metrics: &'a Metrics,
    pub telemetry: &'a Arc<Telemetry>,
}

pub fn build(t: InboundTarget<'_>) -> HttpService {
    let forward = ForwardToApp {
        client: t.client.clone(),
        addr: t.app.address,
        wire: match t.app.protocol {
            Protocol::Grpc => Wire::Http2,
            Protocol::Http => Wire::AsReceived,
        },
    };
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(
            t.metrics.clone(),
            Direction::Inbound,
            PEER,
        ))
        .layer(ServerSpanLayer::new(t.telemetry.clone()))
        .layer(ErrorResponsesLayer)
        // rate limit (429 + Retry-After) · concurrency limit (503)
        .service(resilience::inbound(t.limits, forward));
    BoxCloneSyncService::new(svc)
}

/// Sends the request to the app over a pooled connection.
#[derive(Clone)]
pub struct ForwardToApp {
    client: HttpClient,
    addr: SocketAddr,
    wire: Wire,
}

impl Service<Request<Body>> for ForwardToApp {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let (addr, wire) = (self.addr, self.wire);
        Box::pin(async move { client.send(req, addr, wire).await })
    }
}
