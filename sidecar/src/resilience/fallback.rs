//! The fallback: when the policy has one, a canned answer instead of a "we
//! did not even try" error.
//!
//! It replaces only refusals — the circuit is open, the bulkhead is full, or
//! the retry budget was spent after a failure — where the caller would
//! otherwise get an error that says nothing about its request. A real
//! upstream answer, even a 5xx, is passed on, and so is every other error.
//! Fallback responses carry `x-trellis-fallback: true` and are marked
//! [`Answered`] with the refusal they replace, so the edge adds its
//! `x-trellis-error` and metrics count them by that outcome. A gRPC caller
//! gets no fallback (its body is the policy's HTTP content): the refusal
//! reaches the edge and becomes a gRPC status.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use prometheus::IntCounter;
use tower::{Layer, Service};
use trellis_api::proxy;

use crate::body::{Body, full};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::respond::{Answered, Caller};

pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-trellis-fallback");

/// Response extension set by the retry layer when it returned a failed
/// response because the retry budget was spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetExhausted;

#[derive(Debug)]
struct Canned {
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
}

#[derive(Clone, Debug)]
pub struct FallbackLayer {
    canned: Option<Arc<Canned>>,
    served: IntCounter,
}

impl FallbackLayer {
    /// `None`: refusals stay errors.
    pub fn new(cfg: Option<&proxy::Fallback>, peer: &str, metrics: &Metrics) -> Self {
        let canned = cfg.map(|f| {
            Arc::new(Canned {
                status: StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                body: Bytes::from(f.body.clone()),
                content_type: HeaderValue::from_str(&f.content_type)
                    .unwrap_or(HeaderValue::from_static("text/plain")),
            })
        });
        FallbackLayer {
            canned,
            served: metrics.fallback_responses_total.with_label_values(&[peer]),
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Fallback<S> {
    inner: S,
    layer: FallbackLayer,
}

impl FallbackLayer {
    fn respond(
        &self,
        canned: &Canned,
        result: Result<Response<Body>, ProxyError>,
    ) -> Result<Response<Body>, ProxyError> {
        let why = match &result {
            Err(e @ (ProxyError::CircuitOpen | ProxyError::BulkheadFull)) => *e,
            Err(ProxyError::BudgetExhausted) => ProxyError::BudgetExhausted,
            Ok(rsp) if rsp.extensions().get::<BudgetExhausted>().is_some() => {
                ProxyError::BudgetExhausted
            }
            _ => return result,
        };
        self.served.inc();
        let mut rsp = Response::new(full(canned.body.clone()));
        *rsp.status_mut() = canned.status;
        let h = rsp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, canned.content_type.clone());
        h.insert(FALLBACK_HEADER, HeaderValue::from_static("true"));
        rsp.extensions_mut().insert(Answered(why));
        Ok(rsp)
    }
}

impl<S> Service<Request<Body>> for Fallback<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let canned = match &self.layer.canned {
            Some(c) if Caller::of(req.headers()) == Caller::Http => c.clone(),
            _ => return Box::pin(self.inner.call(req)),
        };
        let fut = super::boxed(self.inner.call(req));
        let layer = self.layer.clone();
        Box::pin(async move { layer.respond(&canned, fut.await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn failing(
        result: fn() -> Result<Response<Body>, ProxyError>,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Send + 'static,
    > {
        tower::service_fn(move |_req: Request<Body>| futures::future::ready(result()))
    }

    fn cfg() -> proxy::Fallback {
        proxy::Fallback {
            status: 200,
            body: r#"{"items":[]}"#.into(),
            content_type: "application/json".into(),
        }
    }

    async fn run(
        layer: &FallbackLayer,
        result: fn() -> Result<Response<Body>, ProxyError>,
    ) -> Result<(Response<()>, Bytes), ProxyError> {
        run_as(layer, result, "text/plain").await
    }

    async fn run_as(
        layer: &FallbackLayer,
        result: fn() -> Result<Response<Body>, ProxyError>,
        content_type: &'static str,
    ) -> Result<(Response<()>, Bytes), ProxyError> {
        let mut req = Request::new(crate::body::empty());
        req.headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
        let rsp = layer.layer(failing(result)).oneshot(req);
        let (parts, body) = rsp.await?.into_parts();
        Ok((
            Response::from_parts(parts, ()),
            body.collect().await.unwrap().to_bytes(),
        ))
    }

    #[tokio::test]
    async fn refusals_get_the_fallback() {
        let m = Metrics::new();
        let layer = FallbackLayer::new(Some(&cfg()), "products", &m);
        for (result, why) in [
            (
                (|| Err(ProxyError::CircuitOpen)) as fn() -> _,
                "circuit-open",
            ),
            (|| Err(ProxyError::BulkheadFull), "bulkhead-full"),
            (|| Err(ProxyError::BudgetExhausted), "budget-exhausted"),
            (
                || {
                    let mut r = Response::new(crate::body::empty());
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r.extensions_mut().insert(BudgetExhausted);
                    Ok(r)
                },
                "budget-exhausted",
            ),
        ] {
            let (rsp, body) = run(&layer, result).await.unwrap();
            assert_eq!(rsp.status(), 200);
            assert_eq!(body, r#"{"items":[]}"#);
            assert_eq!(rsp.headers()["content-type"], "application/json");
            assert_eq!(rsp.headers()[FALLBACK_HEADER], "true");
            assert_eq!(rsp.extensions().get::<Answered>().unwrap().0.reason(), why);
        }
        assert_eq!(
            m.fallback_responses_total
                .with_label_values(&["products"])
                .get(),
            4
        );
    }

    #[tokio::test]
    async fn grpc_callers_get_the_refusal() {
        let m = Metrics::new();
        let layer = FallbackLayer::new(Some(&cfg()), "products", &m);
        let got = run_as(&layer, || Err(ProxyError::CircuitOpen), "application/grpc").await;
        assert_eq!(got.unwrap_err(), ProxyError::CircuitOpen);
        assert_eq!(
            m.fallback_responses_total
                .with_label_values(&["products"])
                .get(),
            0
        );
    }

    #[tokio::test]
    async fn other_errors_and_real_answers_pass() {
        let m = Metrics::new();
        let layer = FallbackLayer::new(Some(&cfg()), "products", &m);
        let got = run(&layer, || Err(ProxyError::Timeout)).await;
        assert_eq!(got.unwrap_err(), ProxyError::Timeout);
        let (rsp, _) = run(&layer, || {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(r)
        })
        .await
        .unwrap();
        assert_eq!(rsp.status(), 503);
        assert!(rsp.headers().get(FALLBACK_HEADER).is_none());
        assert!(rsp.extensions().get::<Answered>().is_none());
        // Without a fallback, refusals stay errors.
        let plain = FallbackLayer::new(None, "products", &m);
        let got = run(&plain, || Err(ProxyError::CircuitOpen)).await;
        assert_eq!(got.unwrap_err(), ProxyError::CircuitOpen);
        assert_eq!(
            m.fallback_responses_total
                .with_label_values(&["products"])
                .get(),
            0
        );
    }
}
