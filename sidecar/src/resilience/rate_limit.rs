//! Inbound limits: what the app behind this sidecar accepts from all its
//! callers together.
//!
//! * A token bucket (`requestsPerSecond`, `burst`): over the rate,
//!   `rate-limited` (a 429 with `Retry-After` saying when a token will be
//!   there — a polite caller, and our own retry layer, which honours it,
//!   comes back then, not at once).
//! * A concurrency limit (`maxConcurrent`): over it, `overloaded` (503), at once.
//!   Unlike the outbound bulkhead nothing queues: the caller's sidecar has
//!   other endpoints to try, and queueing here only adds latency.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use prometheus::IntCounter;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service};
use trellis_api::proxy;

use super::classify::Observe;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket shared by every inbound request.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl TokenBucket {
    pub fn new(cfg: &proxy::RateLimit) -> Self {
        let burst = f64::from(cfg.burst.get());
        TokenBucket {
            rate: f64::from(cfg.requests_per_second.get()),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = b.last.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// The inbound limits; created once per sidecar and kept across reloads
/// while [`proxy::InboundPolicy`] is unchanged.
#[derive(Debug)]
pub struct InboundLimits {
    bucket: Option<TokenBucket>,
    slots: Option<Arc<Semaphore>>,
    rate_limited: IntCounter,
}

impl InboundLimits {
    pub fn new(policy: &proxy::InboundPolicy, metrics: &Metrics) -> Self {
        InboundLimits {
            bucket: policy.rate_limit.as_ref().map(TokenBucket::new),
            slots: policy.max_concurrent.map(|n| {
                let n = usize::try_from(n.get()).unwrap_or(Semaphore::MAX_PERMITS);
                Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))
            }),
            rate_limited: metrics.rate_limited_total.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct InboundLimitLayer {
    limits: Arc<InboundLimits>,
}

impl InboundLimitLayer {
    pub fn new(limits: Arc<InboundLimits>) -> Self {
        InboundLimitLayer { limits }
    }
}

impl<S> Layer<S> for InboundLimitLayer {
    type Service = InboundLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InboundLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct InboundLimit<S> {
    inner: S,
    limits: Arc<InboundLimits>,
}

impl<S> Service<Request<Body>> for InboundLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner's business per call; we never push back.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(bucket) = &self.limits.bucket
            && let Err(wait) = bucket.try_take(Instant::now())
        {
            self.limits.rate_limited.inc();
            let refused = ProxyError::RateLimited { retry_after: wait };
            return Box::pin(futures::future::ready(Err(refused)));
        }
        let permit = match &self.limits.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Box::pin(futures::future::ready(Err(ProxyError::Overloaded))),
            },
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let ready = tower::ServiceExt::ready(&mut inner).await?;
            let rsp = super::boxed(ready.call(req)).await?;
            Ok(match permit {
                Some(p) => rsp.map(|b| Observe::wrap(b, move |_| drop(p))),
                None => rsp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use trellis_api::bounded::Bounded;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let b = TokenBucket::new(&proxy::RateLimit {
            requests_per_second: Bounded::new_const(10),
            burst: Bounded::new_const(5),
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 100 ms later exactly one more.
        let t = t0 + Duration::from_millis(100);
        assert!(b.try_take(t).is_ok());
        assert!(b.try_take(t).is_err());
        // Idle for long: never more than the burst.
        let t = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.try_take(t).is_ok());
        }
        assert!(b.try_take(t).is_err());
    }

    fn ok() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_req: Request<Body>| async {
            Ok(Response::new(crate::body::full("ok")))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_rate_is_refused_with_when_to_retry() {
        let m = Metrics::new();
        let limits = Arc::new(InboundLimits::new(
            &proxy::InboundPolicy {
                rate_limit: Some(proxy::RateLimit {
                    requests_per_second: Bounded::new_const(2),
                    burst: Bounded::new_const(2),
                }),
                max_concurrent: None,
            },
            &m,
        ));
        let svc = InboundLimitLayer::new(limits).layer(ok());
        for _ in 0..2 {
            let rsp = svc
                .clone()
                .oneshot(Request::new(crate::body::empty()))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
        }
        let err = svc
            .clone()
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        // A token every 500 ms: the next one is that far away.
        assert_eq!(
            err,
            ProxyError::RateLimited {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(m.rate_limited_total.get(), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        let rsp = svc
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_concurrent_is_overloaded_until_bodies_end() {
        let m = Metrics::new();
        let limits = Arc::new(InboundLimits::new(
            &proxy::InboundPolicy {
                rate_limit: None,
                max_concurrent: Some(Bounded::new_const(1)),
            },
            &m,
        ));
        let svc = InboundLimitLayer::new(limits).layer(ok());
        let first = svc
            .clone()
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap();
        let second = svc
            .clone()
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        assert_eq!(second, ProxyError::Overloaded);
        drop(first);
        let third = svc
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap();
        assert_eq!(third.status(), 200);
    }
}
