//! What counts as a failure, in one place, so the breaker, outlier detection
//! and retries agree on it.
//!
//! A failure says something about the upstream: it could not be reached, it
//! reset, it was too slow, it answered 5xx or a gRPC status that means "I am
//! not well" (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN). A 4xx is the
//! caller's problem and counts as a success. Rejections the proxy made on its
//! own (bulkhead full, circuit open, rate limited…) say nothing about the
//! upstream and are neutral.

use std::error::Error as StdError;
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

/// Classifies an error the proxy generated.
pub(crate) fn error(e: ProxyError) -> Class {
    match e {
        ProxyError::Timeout
        | ProxyError::ConnectFailure
        | ProxyError::UpstreamReset
        | ProxyError::NoEndpoints
        | ProxyError::BudgetExhausted => Class::Failure,
        ProxyError::CircuitOpen
        | ProxyError::BulkheadFull
        | ProxyError::RateLimited
        | ProxyError::Overloaded
        | ProxyError::UnknownUpstream
        | ProxyError::Loop
        | ProxyError::BadRequest
        | ProxyError::HeadersTooLarge => Class::Neutral,
    }
}

/// Classifies a response head; `None` when only the trailers can tell (gRPC
/// without `grpc-status` in its headers).
pub(crate) fn head<B>(rsp: &Response<B>) -> Option<Class> {
    if let Some(reason) = ProxyError::of_response(rsp) {
        let local_rejection = matches!(
            reason,
            "circuit-open"
                | "bulkhead-full"
                | "rate-limited"
                | "overloaded"
                | "unknown-upstream"
                | "loop"
                | "bad-request"
        );
        if local_rejection {
            return Some(Class::Neutral);
        }
    }
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

/// Why an attempt failed, as far as `retryOn` is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    Connect,
    Reset,
    RefusedStream,
    /// The per-try timeout (or the inner's own); retried like a 504, as Envoy does.
    Timeout,
    Other,
}

/// An attempt's error, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    pub(crate) error: ProxyError,
    pub(crate) cause: Cause,
}

impl Failed {
    /// Whether `on` asks for this failure to be retried. Besides its own
    /// condition, a failure matches the status its error response would have
    /// (a connect failure is a 502, a timeout a 504).
    pub(crate) fn matches(&self, on: RetryOn) -> bool {
        let own = match self.cause {
            Cause::Connect => on == RetryOn::ConnectFailure,
            Cause::Reset => on == RetryOn::Reset,
            // Refused streams were never processed: a reset, only safer.
            Cause::RefusedStream => matches!(on, RetryOn::RefusedStream | RetryOn::Reset),
            Cause::Timeout | Cause::Other => false,
        };
        own || on.matches_status(self.error.status().as_u16())
    }
}

/// Classifies an attempt's error by walking its source chain: a
/// [`ProxyError`] the inner returned, an h2 reset (REFUSED_STREAM or other),
/// a connect error, or an I/O error kind.
pub(crate) fn attempt_error(e: &(dyn StdError + 'static)) -> Failed {
    let failed = |error, cause| Failed { error, cause };
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            let cause = match p {
                ProxyError::ConnectFailure => Cause::Connect,
                ProxyError::UpstreamReset => Cause::Reset,
                ProxyError::Timeout => Cause::Timeout,
                _ => Cause::Other,
            };
            return failed(*p, cause);
        }
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return failed(ProxyError::UpstreamReset, Cause::RefusedStream);
            }
            if h2e.is_reset() || h2e.is_go_away() || h2e.is_io() {
                return failed(ProxyError::UpstreamReset, Cause::Reset);
            }
        }
        if let Some(le) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && le.is_connect()
        {
            return failed(ProxyError::ConnectFailure, Cause::Connect);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable => {
                    return failed(ProxyError::ConnectFailure, Cause::Connect);
                }
                TimedOut => return failed(ProxyError::Timeout, Cause::Timeout),
                _ => {}
            }
        }
        cur = err.source();
    }
    // Connection closed, broken pipe, incomplete message…: the request may
    // have reached the app, which is exactly what `reset` means.
    failed(ProxyError::UpstreamReset, Cause::Reset)
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
    use crate::error::ERROR_HEADER;
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
        // The proxy's own rejections are neutral, its upstream errors are not.
        let own = |r| rsp(503, &[(ERROR_HEADER, r)]);
        assert_eq!(head(&own("bulkhead-full")), Some(Class::Neutral));
        assert_eq!(head(&own("circuit-open")), Some(Class::Neutral));
        assert_eq!(head(&own("connect-failure")), Some(Class::Failure));
        assert_eq!(head(&own("no-endpoints")), Some(Class::Failure));
    }

    #[test]
    fn attempt_errors() {
        let of = |e: BoxError| attempt_error(&*e);
        assert_eq!(
            of(Box::new(ProxyError::ConnectFailure)).cause,
            Cause::Connect
        );
        assert_eq!(of(Box::new(ProxyError::Timeout)).cause, Cause::Timeout);
        let refused: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(of(refused).cause, Cause::RefusedStream);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(of(Box::new(io)).cause, Cause::Connect);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(of(Box::new(reset)).cause, Cause::Reset);
        assert_eq!(of("mystery".into()).error, ProxyError::UpstreamReset);
    }

    #[test]
    fn failures_match_conditions_and_statuses() {
        let f = |error, cause| Failed { error, cause };
        let s = |x: &str| x.parse::<RetryOn>().unwrap();
        let connect = f(ProxyError::ConnectFailure, Cause::Connect);
        assert!(connect.matches(s("connect-failure")));
        assert!(connect.matches(s("502")));
        assert!(!connect.matches(s("reset")));
        let refused = f(ProxyError::UpstreamReset, Cause::RefusedStream);
        assert!(refused.matches(s("refused-stream")) && refused.matches(s("reset")));
        let reset = f(ProxyError::UpstreamReset, Cause::Reset);
        assert!(!reset.matches(s("refused-stream")));
        let timeout = f(ProxyError::Timeout, Cause::Timeout);
        assert!(timeout.matches(s("504")) && timeout.matches(s("500-599")));
        assert!(!timeout.matches(s("503")));
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
