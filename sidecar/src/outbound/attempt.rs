//! One attempt of a request: pick an endpoint (avoiding those earlier
//! attempts of the same request used), open a client span, send it over the
//! pooled connection, and tell the balancer and the outcome observer how it
//! went — for a gRPC response whose status comes in the trailers, once they
//! came, as the breaker judges it. This is the innermost service of the
//! outbound stack; the retry layer calls it once per try.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::Service;

use crate::balance::{Endpoint, EndpointSet, Outcome, TriedEndpoints};
use crate::body::Body;
use crate::client::{HttpClient, Wire};
use crate::error::ProxyError;
use crate::resilience::classify::{self, End, Observe};
use crate::trace::Telemetry;

#[derive(Clone)]
pub struct Attempt {
    peer: Arc<str>,
    endpoints: Arc<EndpointSet>,
    client: HttpClient,
    telemetry: Arc<Telemetry>,
}

impl Attempt {
    pub fn new(
        peer: &str,
        endpoints: Arc<EndpointSet>,
        client: HttpClient,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Attempt {
            peer: peer.into(),
            endpoints,
            client,
            telemetry,
        }
    }
}

/// Reports the attempt's outcome exactly once: `Cancelled` if it is dropped
/// before its response head (a timeout above it fired), nothing if a gRPC
/// body it waits on is dropped by the caller (that says nothing of the endpoint).
struct Report {
    set: Arc<EndpointSet>,
    endpoint: Arc<Endpoint>,
    start: Instant,
    done: bool,
}

impl Report {
    fn finish(mut self, outcome: impl FnOnce(Duration) -> Outcome) {
        self.done = true;
        let latency = self.start.elapsed();
        self.set.record(&self.endpoint, outcome(latency));
    }

    fn abandon(mut self) {
        self.done = true;
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.done {
            let latency = self.start.elapsed();
            self.endpoint.observe_failure();
            self.set
                .record(&self.endpoint, Outcome::Cancelled { latency });
        }
    }
}

impl Service<Request<Body>> for Attempt {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        let avoid = tried.as_ref().map(TriedEndpoints::list).unwrap_or_default();
        let Some(endpoint) = self.endpoints.pick(&avoid) else {
            return Box::pin(async { Err(ProxyError::NoEndpoints) });
        };
        if let Some(t) = &tried {
            t.push(endpoint.addr());
        }
        let mut span = self
            .telemetry
            .client_span(&mut req, &self.peer, endpoint.addr());
        let client = self.client.clone();
        let report = Report {
            set: self.endpoints.clone(),
            endpoint: endpoint.clone(),
            start: Instant::now(),
            done: false,
        };
        Box::pin(async move {
            let in_flight = endpoint.start();
            let result = client.send(req, endpoint.addr(), Wire::AsReceived).await;
            drop(in_flight);
            match result {
                Ok(rsp) => {
                    let head_latency = report.start.elapsed();
                    endpoint.observe(head_latency);
                    span.response(rsp.status());
                    let status = rsp.status();
                    let grpc_status = classify::grpc_status(rsp.headers());
                    if grpc_status.is_none() && classify::is_grpc(rsp.headers()) {
                        // The status is in the trailers: report when they come.
                        return Ok(rsp.map(|body| {
                            Observe::wrap(body, move |end| {
                                let grpc_status = match end {
                                    End::Trailers(t) => classify::grpc_status(t),
                                    End::Dropped => return report.abandon(),
                                    // No status at all: gRPC clients read that as UNKNOWN.
                                    End::Eos | End::Error => Some(2),
                                };
                                report.finish(|_| Outcome::Response {
                                    status,
                                    grpc_status,
                                    latency: head_latency,
                                })
                            })
                        }));
                    }
                    report.finish(|latency| Outcome::Response {
                        status,
                        grpc_status,
                        latency,
                    });
                    Ok(rsp)
                }
                Err(error) => {
                    endpoint.observe_failure();
                    span.error(error.reason());
                    report.finish(|latency| Outcome::Failed { error, latency });
                    Err(error)
                }
            }
        })
    }
}
