//! The outermost layer: turns every error of the stack into a response, and,
//! when the policy has a fallback, answers with it instead of a "we did not
//! even try" error.
//!
//! The fallback replaces only refusals — the circuit is open, the bulkhead is
//! full, or the retry budget was spent after a failure — where the caller
//! would otherwise get an error that says nothing about its request. A real
//! upstream answer, even a 5xx, is passed on. Fallback responses carry
//! `x-trellis-fallback: true` and `x-trellis-error: <why>`, so they are
//! counted by outcome like the error they replace.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use prometheus::IntCounter;
use tower::{Layer, Service};
use trellis_api::proxy;

use crate::body::{Body, full};
use crate::error::{ERROR_HEADER, ProxyError};
use crate::metrics::Metrics;

pub const FALLBACK_HEADER: &str = "x-trellis-fallback";

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
    /// `None`: errors become their plain `x-trellis-error` responses.
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
    fn respond(&self, result: Result<Response<Body>, ProxyError>) -> Response<Body> {
        let why = match &result {
            Err(e @ (ProxyError::CircuitOpen | ProxyError::BulkheadFull)) => Some(*e),
            Ok(rsp) if rsp.extensions().get::<BudgetExhausted>().is_some() => {
                Some(ProxyError::BudgetExhausted)
            }
            _ => None,
        };
        match (why, &self.canned) {
            (Some(why), Some(canned)) => {
                self.served.inc();
                let mut rsp = Response::new(full(canned.body.clone()));
                *rsp.status_mut() = canned.status;
                let h = rsp.headers_mut();
                h.insert(http::header::CONTENT_TYPE, canned.content_type.clone());
                h.insert(FALLBACK_HEADER, HeaderValue::from_static("true"));
                h.insert(ERROR_HEADER, HeaderValue::from_static(why.reason()));
                rsp
            }
            _ => result.unwrap_or_else(ProxyError::into_response),
        }
    }
}

impl<S> Service<Request<Body>> for Fallback<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(_)) | Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = super::boxed(self.inner.call(req));
        let layer = self.layer.clone();
        Box::pin(async move { Ok(layer.respond(fut.await)) })
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
    ) -> (Response<()>, Bytes) {
        let rsp = layer
            .layer(failing(result))
            .oneshot(Request::new(crate::body::empty()));
        let (parts, body) = rsp.await.unwrap().into_parts();
        (
            Response::from_parts(parts, ()),
            body.collect().await.unwrap().to_bytes(),
        )
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
            (
                || {
                    let mut r = ProxyError::ConnectFailure.into_response();
                    r.extensions_mut().insert(BudgetExhausted);
                    Ok(r)
                },
                "budget-exhausted",
            ),
        ] {
            let (rsp, body) = run(&layer, result).await;
            assert_eq!(rsp.status(), 200);
            assert_eq!(body, r#"{"items":[]}"#);
            assert_eq!(rsp.headers()["content-type"], "application/json");
            assert_eq!(rsp.headers()[FALLBACK_HEADER], "true");
            assert_eq!(rsp.headers()[ERROR_HEADER], why);
        }
        assert_eq!(
            m.fallback_responses_total
                .with_label_values(&["products"])
                .get(),
            3
        );
    }

    #[tokio::test]
    async fn other_errors_and_real_answers_pass() {
        let m = Metrics::new();
        let layer = FallbackLayer::new(Some(&cfg()), "products", &m);
        let (rsp, _) = run(&layer, || Err(ProxyError::Timeout)).await;
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.headers()[ERROR_HEADER], "timeout");
        assert!(rsp.headers().get(FALLBACK_HEADER).is_none());
        let (rsp, _) = run(&layer, || {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(r)
        })
        .await;
        assert_eq!(rsp.status(), 503);
        assert!(rsp.headers().get(FALLBACK_HEADER).is_none());
        // Without a fallback, refusals are plain errors.
        let plain = FallbackLayer::new(None, "products", &m);
        let (rsp, _) = run(&plain, || Err(ProxyError::CircuitOpen)).await;
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()[ERROR_HEADER], "circuit-open");
        assert_eq!(
            m.fallback_responses_total
                .with_label_values(&["products"])
                .get(),
            0
        );
    }
}
