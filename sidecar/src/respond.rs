//! The boundary where errors become responses: below it a stack fails with
//! errors (a `ProxyError`, or an attempt's transport error), above it every
//! request gets a response, carrying `x-trellis-error` when the proxy made it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::error::ProxyError;

#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponsesLayer;

impl<S> Layer<S> for ErrorResponsesLayer {
    type Service = ErrorResponses<S>;
    fn layer(&self, inner: S) -> ErrorResponses<S> {
        ErrorResponses {
            inner,
            failed: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorResponses<S> {
    inner: S,
    /// `poll_ready` failed: the next call answers with this instead.
    failed: Option<ProxyError>,
}

/// The error response for any error a stack produced.
pub fn error_response(e: impl Into<BoxError>) -> Response<Body> {
    let e: BoxError = e.into();
    let p = ProxyError::from_error(e.as_ref());
    tracing::debug!(error = %e, reason = p.reason(), "request failed in the proxy");
    p.into_response()
}

impl<S> Service<Request<Body>> for ErrorResponses<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A failing poll_ready has nowhere to go: the call answers with it.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let e: BoxError = e.into();
                self.failed = Some(ProxyError::from_error(e.as_ref()));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(p) = self.failed.take() {
            return Box::pin(async move { Ok(p.into_response()) });
        }
        let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> = Box::pin(
            futures::TryFutureExt::map_err(self.inner.call(req), Into::into),
        );
        Box::pin(async move {
            Ok(match fut.await {
                Ok(rsp) => rsp,
                Err(e) => error_response(e),
            })
        })
    }
}
