//! What counts as a failure, in one place, so the breaker, outlier detection
//! and retries agree on it.
//!
//! A failure says something about the upstream: it could not be reached, it
//! reset, it was too slow, it answered 5xx or a gRPC status that means "I am
//! not well" (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN). A 4xx is the
//! caller's problem and counts as a success. Rejections the proxy made on its
//! own (bulkhead full, circuit open, rate limited…) say nothing about the
//! upstream and are neutral.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use trellis_api::crd::RetryOn;

use crate::body::{Body, BoxError};
use crate::error::ProxyError;

/// gRPC codes that count as upstream failures: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE.
pub const GRPC_FAILURE_CODES: [u16; 4] = [2, 4, 13, 14];

/// The verdict on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Success,
    Failure,
    /// Says nothing about the upstream (a local rejection, a cancelled call).
    Neutral,
}

impl Class {
    fn of(failure: bool) -> Self {
        if failure {
            Class::Failure
        } else {
            Class::Success
        }
    }
}

/// The `grpc-status` in headers or trailers, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Whether a response is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Classifies a call that ended in an error.
pub(crate) fn error(e: ProxyError) -> Class {
    match e {
        ProxyError::Timeout
        | ProxyError::ConnectFailure
        | ProxyError::UpstreamReset
        | ProxyError::RefusedStream
        | ProxyError::BadResponse
        | ProxyError::NoEndpoints
        | ProxyError::BudgetExhausted => Class::Failure,
        ProxyError::CircuitOpen
        | ProxyError::BulkheadFull
        | ProxyError::RateLimited { .. }
        | ProxyError::Overloaded
        | ProxyError::UnknownUpstream
        | ProxyError::Loop
        | ProxyError::BadRequest
        | ProxyError::HeadersTooLarge => Class::Neutral,
    }
}

/// Classifies an upstream's response head; `None` when only the trailers
/// can tell (gRPC without `grpc-status` in its headers). Refusals of this
/// proxy never get here: they are errors until the edge.
pub(crate) fn head<B>(rsp: &Response<B>) -> Option<Class> {
    if rsp.status().is_server_error() {
        return Some(Class::Failure);
    }
    if let Some(code) = grpc_status(rsp.headers()) {
        return Some(Class::of(GRPC_FAILURE_CODES.contains(&code)));
    }
    if is_grpc(rsp.headers()) {
        return None;
    }
    Some(Class::Success)
}

/// Classifies how a gRPC response body ended.
pub(crate) fn end(end: End<'_>) -> Class {
    match end {
        End::Trailers(t) => {
            Class::of(grpc_status(t).is_none_or(|c| GRPC_FAILURE_CODES.contains(&c)))
        }
        // A gRPC response without a status is broken.
        End::Eos | End::Error => Class::Failure,
        End::Dropped => Class::Neutral,
    }
}

/// Whether `on` asks for an attempt that failed with `e` to be retried.
/// Besides its own condition, a failure matches the status its answer
/// would have (a connect failure is a 502, a timeout a 504).
pub(crate) fn retryable(e: ProxyError, on: RetryOn) -> bool {
    let own = match e {
        ProxyError::ConnectFailure => on == RetryOn::ConnectFailure,
        ProxyError::UpstreamReset => on == RetryOn::Reset,
        // Refused streams were never processed: a reset, only safer.
        ProxyError::RefusedStream => matches!(on, RetryOn::RefusedStream | RetryOn::Reset),
        _ => false,
    };
    own || on.matches_status(e.status().as_u16())
}

/// How an observed body ended.
#[derive(Debug)]
pub(crate) enum End<'a> {
    Trailers(&'a HeaderMap),
    /// Ended without trailers.
    Eos,
    Error,
    /// Dropped before its end (the client went away).
    Dropped,
}

/// A body that calls `on_end` exactly once, when it ends, fails or is dropped.
///
/// Used to hold a permit (bulkhead, concurrency) for as long as a response
/// streams, and to read a gRPC status from trailers without buffering.
pub(crate) struct Observe<F: FnOnce(End<'_>)> {
    inner: Body,
    on_end: Option<F>,
}

impl<F> Observe<F>
where
    F: FnOnce(End<'_>) + Send + Unpin + 'static,
{
    /// Wraps `body`; an already finished body is reported at once.
    pub(crate) fn wrap(body: Body, on_end: F) -> Body {
        if body.is_end_stream() {
            on_end(End::Eos);
            return body;
        }
        crate::body::boxed(Observe {
            inner: body,
            on_end: Some(on_end),
        })
    }

    fn fire(&mut self, end: End<'_>) {
        if let Some(f) = self.on_end.take() {
            f(end);
        }
    }
}

impl<F> HttpBody for Observe<F>
where
    F: FnOnce(End<'_>) + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.fire(End::Eos),
            Poll::Ready(Some(Err(_))) => this.fire(End::Error),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    this.fire(End::Trailers(t));
                } else if this.inner.is_end_stream() {
                    this.fire(End::Eos);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(End<'_>)> Drop for Observe<F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(End::Dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    fn rsp(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn heads() {
        assert_eq!(head(&rsp(200, &[])), Some(Class::Success));
        assert_eq!(head(&rsp(404, &[])), Some(Class::Success));
        assert_eq!(head(&rsp(429, &[])), Some(Class::Success));
        assert_eq!(head(&rsp(500, &[])), Some(Class::Failure));
        assert_eq!(head(&rsp(503, &[])), Some(Class::Failure));
        let grpc = ("content-type", "application/grpc");
        assert_eq!(head(&rsp(200, &[grpc])), None);
        assert_eq!(
            head(&rsp(200, &[grpc, ("grpc-status", "0")])),
            Some(Class::Success)
        );
        assert_eq!(
            head(&rsp(200, &[grpc, ("grpc-status", "5")])),
            Some(Class::Success)
        );
        for code in ["2", "4", "13", "14"] {
            assert_eq!(
                head(&rsp(200, &[grpc, ("grpc-status", code)])),
                Some(Class::Failure)
            );
        }
        // A peer sidecar's refusal is a 5xx like any other: the upstream cannot take the call.
        assert_eq!(
            head(&rsp(503, &[("x-trellis-error", "overloaded")])),
            Some(Class::Failure)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(error(ProxyError::ConnectFailure), Class::Failure);
        assert_eq!(error(ProxyError::Timeout), Class::Failure);
        assert_eq!(error(ProxyError::BulkheadFull), Class::Neutral);
        assert_eq!(error(ProxyError::CircuitOpen), Class::Neutral);
    }

    #[test]
    fn failures_match_conditions_and_statuses() {
        let s = |x: &str| x.parse::<RetryOn>().unwrap();
        let connect = ProxyError::ConnectFailure;
        assert!(retryable(connect, s("connect-failure")));
        assert!(retryable(connect, s("502")));
        assert!(!retryable(connect, s("reset")));
        let refused = ProxyError::RefusedStream;
        assert!(retryable(refused, s("refused-stream")) && retryable(refused, s("reset")));
        assert!(!retryable(ProxyError::UpstreamReset, s("refused-stream")));
        let timeout = ProxyError::Timeout;
        assert!(retryable(timeout, s("504")) && retryable(timeout, s("500-599")));
        assert!(!retryable(timeout, s("503")));
    }

    #[tokio::test]
    async fn observe_reports_trailers_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let inner = http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ]));
        let body = Observe::wrap(crate::body::boxed(inner), move |e| {
            s2.lock().unwrap().push(end(e));
        });
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(*seen.lock().unwrap(), vec![Class::Failure]);
    }

    #[test]
    fn observe_reports_drop_and_empty() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        drop(Observe::wrap(crate::body::empty(), move |e| {
            s2.lock().unwrap().push(format!("{e:?}"));
        }));
        let s3 = seen.clone();
        let streaming = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        drop(Observe::wrap(crate::body::boxed(streaming), move |e| {
            s3.lock().unwrap().push(format!("{e:?}"));
        }));
        assert_eq!(*seen.lock().unwrap(), vec!["Eos", "Dropped"]);
    }
}
