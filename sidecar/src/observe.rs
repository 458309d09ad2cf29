//! Request metrics: one count and one latency sample per request a listener
//! answers, labelled by direction, peer, status class and outcome. It sits
//! at the top of each stack, so it sees what the client sees (retries and
//! fallbacks included) and never a path or an address as a label.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use prometheus::{Histogram, IntCounter};
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

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(s: StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn status_class(s: StatusCode) -> &'static str {
    STATUS_CLASSES[status_class_index(s)]
}

/// The metric children of one (direction, peer), resolved on first use and
/// then reused: `with_label_values` hashes every label on each call. Lazy,
/// so a series still appears only once a request has been counted in it.
struct PeerMetrics {
    metrics: Metrics,
    direction: Direction,
    peer: Arc<str>,
    duration: OnceLock<Histogram>,
    /// `outcome="success"` by status class; other outcomes are rare and
    /// resolved per request.
    success: [OnceLock<IntCounter>; 5],
}

impl PeerMetrics {
    fn new(metrics: Metrics, direction: Direction, peer: &str) -> Self {
        PeerMetrics {
            metrics,
            direction,
            peer: peer.into(),
            duration: OnceLock::new(),
            success: Default::default(),
        }
    }

    fn record<B>(&self, rsp: &Response<B>, start: Instant) {
        let class = status_class_index(rsp.status());
        match ProxyError::of_response(rsp) {
            None => self.success[class]
                .get_or_init(|| {
                    self.metrics.requests_total.with_label_values(&[
                        self.direction.as_str(),
                        &self.peer,
                        STATUS_CLASSES[class],
                        "success",
                    ])
                })
                .inc(),
            Some(outcome) => self
                .metrics
                .requests_total
                .with_label_values(&[
                    self.direction.as_str(),
                    &self.peer,
                    STATUS_CLASSES[class],
                    outcome,
                ])
                .inc(),
        }
        self.duration
            .get_or_init(|| {
                self.metrics
                    .request_duration_seconds
                    .with_label_values(&[self.direction.as_str(), &self.peer])
            })
            .observe(start.elapsed().as_secs_f64());
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    peer: Arc<PeerMetrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics, direction: Direction, peer: &str) -> Self {
        ObserveLayer {
            peer: Arc::new(PeerMetrics::new(metrics, direction, peer)),
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
        let peer = self.layer.peer.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            peer.record(&rsp, start);
            Ok(rsp)
        })
    }
}
