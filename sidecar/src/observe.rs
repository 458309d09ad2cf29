//! Request metrics: one count and one latency sample per request a listener
//! answers, labelled by direction, peer, status class and outcome. It sits
//! at the top of each stack, so it sees what the client sees (retries and
//! fallbacks included) and never a path or an address as a label.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::Direction;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Records one finished request (time to response head).
pub fn record<B>(
    metrics: &Metrics,
    direction: Direction,
    peer: &str,
    rsp: &Response<B>,
    start: Instant,
) {
    let outcome = ProxyError::of_response(rsp).unwrap_or("success");
    metrics
        .requests_total
        .with_label_values(&[
            direction.as_str(),
            peer,
            status_class(rsp.status()),
            outcome,
        ])
        .inc();
    metrics
        .request_duration_seconds
        .with_label_values(&[direction.as_str(), peer])
        .observe(start.elapsed().as_secs_f64());
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
    direction: Direction,
    peer: Arc<str>,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics, direction: Direction, peer: &str) -> Self {
        ObserveLayer {
            metrics,
            direction,
            peer: peer.into(),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
            Box::pin(self.inner.call(req));
        let layer = self.layer.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            record(&layer.metrics, layer.direction, &layer.peer, &rsp, start);
            Ok(rsp)
        })
    }
}
