//! The inbound stack, composed in this one place: requests from other
//! sidecars (and the kubelet's probes) to the app. The inbound edge above it
//! checks the request head and turns whatever error it ends with into the
//! answer.
//!
//! ```text
//! ServerSpan         server span; its context is what the app sees as parent
//! ── resilience (sidecar/src/resilience/) ──
//! rate limit · concurrency limit
//! ──
//! ForwardToApp       pooled connection to app.address (HTTP/2 for gRPC apps);
//!                    a CONNECT opens a tunnel to it instead
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower::Layer;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::HttpService;
use crate::body::Body;
use crate::client::{HttpClient, Wire};
use crate::error::ProxyError;
use crate::resilience::{self, InboundResilience};
use crate::trace::{ServerSpanLayer, Telemetry};
use crate::upgrade::Tunnel;
use trellis_api::crd::Protocol;
use trellis_api::proxy::App;

pub struct InboundTarget<'a> {
    pub app: &'a App,
    /// Rate and concurrency limits, kept across reloads while unchanged.
    pub limits: &'a InboundResilience,
    pub client: &'a HttpClient,
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
    // rate limit (429 + Retry-After) · concurrency limit (503)
    let limited = resilience::inbound(t.limits, forward);
    BoxCloneSyncService::new(ServerSpanLayer::new(t.telemetry.clone()).layer(limited))
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
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let addr = self.addr;
        if req.method() == Method::CONNECT {
            // The app is the tunnel's end, not a proxy: it never sees CONNECT.
            return Box::pin(Tunnel::open(addr));
        }
        let client = self.client.clone();
        let wire = self.wire;
        Box::pin(async move { client.send(req, addr, wire).await })
    }
}
