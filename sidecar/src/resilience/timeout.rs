//! Deadlines: one for the whole call (all attempts and backoffs included) and
//! one per attempt.
//!
//! The request deadline is what the caller can afford; a `grpc-timeout` the
//! caller sent says the same thing more precisely, so it may shorten the
//! deadline — never lengthen it, or the proxy would keep working for a caller
//! that already gave up. The deadline travels down the stack as a [`Deadline`]
//! request extension so inner layers can plan with it (the retry layer does
//! not start a backoff that cannot finish in time; the breaker counts a call
//! cut by the deadline as a failure).
//!
//! Both timeouts bound the wait for the response head. A response that has
//! started streaming is not cut: idle timeouts of the connection handle stalls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::ProxyError;

/// Request extension: when the caller stops waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// The earliest of the request's existing [`Deadline`] and `candidate`.
fn narrow<B>(req: &mut Request<B>, candidate: Option<Instant>) -> Option<Instant> {
    let existing = req.extensions().get::<Deadline>().map(|d| d.0);
    let deadline = match (existing, candidate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(d) = deadline
        && existing != Some(d)
    {
        req.extensions_mut().insert(Deadline(d));
    }
    deadline
}

/// Parses a gRPC `grpc-timeout` value: 1–8 digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Bounds the whole call by `timeout` (and the caller's `grpc-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer {
    timeout: Option<Duration>,
}

impl RequestTimeoutLayer {
    /// `None`: no timeout of our own; a `grpc-timeout` still applies.
    pub fn new(timeout: Option<Duration>) -> Self {
        RequestTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for RequestTimeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<Response<Body>, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let now = Instant::now();
        let ours = self.timeout.map(|t| now + t);
        let grpc = req
            .headers()
            .get("grpc-timeout")
            .and_then(parse_grpc_timeout)
            .map(|t| now + t);
        let candidate = match (ours, grpc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = narrow(&mut req, candidate);
        let fut = super::boxed(self.inner.call(req));
        match deadline {
            Some(d) => Box::pin(async move {
                tokio::time::timeout_at(d, fut)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout))
            }),
            None => fut,
        }
    }
}

/// Bounds one attempt (the inner is the attempt service).
#[derive(Clone, Copy, Debug)]
pub struct PerTryTimeoutLayer {
    timeout: Option<Duration>,
}

impl PerTryTimeoutLayer {
    pub fn new(timeout: Option<Duration>) -> Self {
        PerTryTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for PerTryTimeoutLayer {
    type Service = PerTryTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PerTryTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PerTryTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> Service<Request<Body>> for PerTryTimeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError> + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<Response<Body>, ProxyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The attempt's own deadline also tells the connector how long it may take.
        let deadline = narrow(&mut req, self.timeout.map(|t| Instant::now() + t));
        let per_try = self.timeout.is_some();
        let fut = super::boxed(self.inner.call(req));
        match deadline {
            // Only our own timer may fire here; the request deadline is enforced outside.
            Some(d) if per_try => Box::pin(async move {
                tokio::time::timeout_at(d, fut)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout))
            }),
            _ => fut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::ServiceExt;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(
            parse_grpc_timeout(&hv("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_grpc_timeout(&hv("3M")),
            Some(Duration::from_secs(180))
        );
        assert_eq!(parse_grpc_timeout(&hv("4S")), Some(Duration::from_secs(4)));
        assert_eq!(
            parse_grpc_timeout(&hv("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout(&hv("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            parse_grpc_timeout(&hv("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            "",
            "S",
            "1",
            "123456789S",
            "1s",
            "-1S",
            "1.5S",
            "1 S",
            "1Sm",
        ] {
            assert_eq!(
                parse_grpc_timeout(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad:?}"
            );
        }
    }

    /// An upstream that answers after `delay`, reporting the deadline it saw.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |req: Request<Body>| async move {
            let deadline = req.extensions().get::<Deadline>().copied();
            tokio::time::sleep(delay).await;
            let mut rsp = Response::new(body::empty());
            if let Some(d) = deadline {
                rsp.extensions_mut().insert(d);
            }
            Ok(rsp)
        })
    }

    fn req(grpc_timeout: Option<&'static str>) -> Request<Body> {
        let mut r = Request::new(body::empty());
        if let Some(t) = grpc_timeout {
            r.headers_mut().insert("grpc-timeout", hv(t));
        }
        r
    }

    #[tokio::test(start_paused = true)]
    async fn request_timeout_fires_with_504() {
        let svc = RequestTimeoutLayer::new(Some(Duration::from_millis(100)))
            .layer(slow(Duration::from_millis(150)));
        let err = svc.oneshot(req(None)).await.unwrap_err();
        assert_eq!(err, ProxyError::Timeout);
        assert_eq!(err.status(), 504);
    }

    #[tokio::test(start_paused = true)]
    async fn request_within_timeout_sees_its_deadline() {
        let start = Instant::now();
        let svc = RequestTimeoutLayer::new(Some(Duration::from_millis(100)))
            .layer(slow(Duration::from_millis(50)));
        let rsp = svc.oneshot(req(None)).await.unwrap();
        let seen = rsp.extensions().get::<Deadline>().unwrap().0;
        assert_eq!(seen, start + Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_shortens_never_lengthens() {
        let start = Instant::now();
        let layer = RequestTimeoutLayer::new(Some(Duration::from_millis(100)));
        // Shorter: wins.
        let err = layer
            .layer(slow(Duration::from_millis(50)))
            .oneshot(req(Some("20m")))
            .await
            .unwrap_err();
        assert_eq!(err, ProxyError::Timeout);
        assert_eq!(Instant::now(), start + Duration::from_millis(20));
        // Longer: ignored.
        let start = Instant::now();
        let err = layer
            .layer(slow(Duration::from_millis(150)))
            .oneshot(req(Some("10S")))
            .await
            .unwrap_err();
        assert_eq!(err, ProxyError::Timeout);
        assert_eq!(Instant::now(), start + Duration::from_millis(100));
        // Without a timeout of ours, grpc-timeout alone applies.
        let err = RequestTimeoutLayer::new(None)
            .layer(slow(Duration::from_secs(5)))
            .oneshot(req(Some("1S")))
            .await
            .unwrap_err();
        assert_eq!(err, ProxyError::Timeout);
        // Neither: no deadline at all.
        let rsp = RequestTimeoutLayer::new(None)
            .layer(slow(Duration::from_secs(5)))
            .oneshot(req(None))
            .await
            .unwrap();
        assert!(rsp.extensions().get::<Deadline>().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_fires_and_narrows_the_deadline() {
        let svc = PerTryTimeoutLayer::new(Some(Duration::from_millis(30)))
            .layer(slow(Duration::from_millis(50)));
        let err = svc.clone().oneshot(req(None)).await.unwrap_err();
        assert_eq!(err, ProxyError::Timeout);

        let start = Instant::now();
        let svc = PerTryTimeoutLayer::new(Some(Duration::from_millis(80)))
            .layer(slow(Duration::from_millis(50)));
        let mut r = req(None);
        r.extensions_mut()
            .insert(Deadline(start + Duration::from_millis(60)));
        let rsp = svc.oneshot(r).await.unwrap();
        // The earlier of the request deadline and the per-try one.
        assert_eq!(
            rsp.extensions().get::<Deadline>().unwrap().0,
            start + Duration::from_millis(60)
        );
    }
}
