//! The inbound side: requests from other sidecars to the app behind this one.

pub mod stack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use http::{Request, Response};

use crate::body::Body;
use crate::hygiene::{self, Hop};
use crate::metrics::Metrics;
use crate::server::Handler;
use crate::trace::Remote;
use crate::{Direction, HttpService, observe};
use trellis_api::proxy::HttpSettings;

/// The inbound listener's state; the stack is replaced on reload.
pub struct Inbound {
    pub stack: ArcSwap<HttpService>,
    hop: Hop,
    settings: Arc<ArcSwap<HttpSettings>>,
    metrics: Metrics,
}

impl Inbound {
    pub fn new(
        instance: &str,
        stack: HttpService,
        settings: Arc<ArcSwap<HttpSettings>>,
        metrics: Metrics,
    ) -> Self {
        Inbound {
            stack: ArcSwap::from_pointee(stack),
            hop: Hop::new(instance, Direction::Inbound),
            settings,
            metrics,
        }
    }
}

#[derive(Clone)]
pub struct InboundHandler(pub Arc<Inbound>);

impl Handler for InboundHandler {
    fn handle(
        &self,
        mut req: Request<Body>,
        remote: SocketAddr,
    ) -> BoxFuture<'static, Response<Body>> {
        let start = Instant::now();
        let max_headers = self.0.settings.load().max_headers as usize;
        let checked = match self.0.hop.on_request(&mut req, remote, max_headers) {
            Ok(()) => Ok((**self.0.stack.load()).clone()),
            Err(e) => {
                let rsp = e.into_response();
                observe::record(
                    &self.0.metrics,
                    Direction::Inbound,
                    stack::PEER,
                    &rsp,
                    start,
                );
                Err(rsp)
            }
        };
        req.extensions_mut().insert(Remote(remote));
        let stack = match checked {
            Ok(s) => s,
            Err(rsp) => return Box::pin(std::future::ready(rsp)),
        };
        hygiene::respond_through(stack, req)
    }
}
