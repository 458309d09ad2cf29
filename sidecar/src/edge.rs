//! The edge of both listeners: where a request comes in and its one response
//! goes out. In this order:
//!
//! 1. the request body is bounded against stalls ([`crate::stall`]);
//! 2. the head is checked and rewritten ([`crate::hygiene`]); a head HTTP
//!    forbids is answered here and never forwarded;
//! 3. the listener's [`Router`] picks the stack (an upstream's, or the app's);
//! 4. whatever the stack ends with — an upstream's response or a
//!    [`ProxyError`] — becomes the answer the caller's protocol expects
//!    ([`crate::respond`]), the one place errors turn into responses;
//! 5. it is counted ([`crate::observe`]), its hop-by-hop headers go, and a
//!    protocol switch is spliced ([`crate::upgrade`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::body::Body;
use crate::error::ProxyError;
use crate::hygiene::{self, Hop};
use crate::observe::PeerMetrics;
use crate::published::View;
use crate::respond::{self, Caller};
use crate::server::Handler;
use crate::upgrade::{self, Pending};
use crate::{HttpService, stall};
use trellis_api::proxy::HttpSettings;

/// How many headers a forwarded request may gain on its way through.
const ADDED_HEADERS: usize = 8;

/// Where a request goes, and whose metrics count it.
pub struct Route {
    pub stack: HttpService,
    pub metrics: Arc<PeerMetrics>,
}

/// A listener's choice of stack.
pub trait Router: Send + Sync + 'static {
    fn route(&self, req: &mut Request<Body>, remote: SocketAddr) -> Result<Route, ProxyError>;
    /// Counts requests refused before any route was chosen.
    fn unrouted(&self) -> &PeerMetrics;
}

/// One listener's edge (cheap to clone: every connection holds one).
pub struct Edge<R>(Arc<Parts<R>>);

struct Parts<R> {
    hop: Hop,
    settings: View<HttpSettings>,
    router: R,
}

impl<R: Router> Edge<R> {
    pub fn new(hop: Hop, settings: View<HttpSettings>, router: R) -> Self {
        Edge(Arc::new(Parts {
            hop,
            settings,
            router,
        }))
    }
}

impl<R> Clone for Edge<R> {
    fn clone(&self) -> Self {
        Edge(self.0.clone())
    }
}

impl<R: Router> Handler for Edge<R> {
    fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Response<Body>> {
        let start = Instant::now();
        let edge = &*self.0;
        let settings = edge.settings.load();
        let stall = settings.body_idle_timeout.as_std();
        let mut req = req.map(|b| stall::bounded(b, stall));
        // Room for what hygiene and tracing add (Via, x-forwarded-*,
        // x-request-id, traceparent, tracestate, Host): one growth of the
        // map instead of one per insert.
        req.headers_mut().reserve(ADDED_HEADERS);
        let caller = Caller::of(req.headers());
        let routed = edge
            .hop
            .on_request(&mut req, remote, settings.max_headers as usize)
            .and_then(|()| edge.router.route(&mut req, remote));
        let route = match routed {
            Ok(route) => route,
            Err(e) => {
                let mut rsp = respond::answer(Err(e), caller);
                edge.router.unrouted().record(&rsp, start);
                hygiene::on_response(&mut rsp);
                return Box::pin(std::future::ready(rsp));
            }
        };
        let upgrade = upgrade::is_requested(&req).then(|| Pending::take(&mut req));
        // Boxed first: the oneshot future is only `Send` for the concrete request type.
        let call: BoxFuture<'static, Result<Response<Body>, ProxyError>> =
            Box::pin(route.stack.oneshot(req));
        Box::pin(async move {
            let mut rsp = respond::answer(call.await, caller);
            route.metrics.record(&rsp, start);
            hygiene::on_response(&mut rsp);
            if let Some(upgrade) = upgrade {
                upgrade.finish(&mut rsp);
            }
            rsp
        })
    }
}
