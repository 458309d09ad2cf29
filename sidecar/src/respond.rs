//! What a client sees when the proxy answers instead of the app.
//!
//! An HTTP caller gets the error's status, a text body and
//! `x-trellis-error: <reason>`. A gRPC caller gets a gRPC answer, since a
//! gRPC client reads `grpc-status`, not the HTTP status: trailers-only
//! (status 200, `grpc-status`, `grpc-message` in the one HEADERS frame, no
//! body), with `x-trellis-error` beside them. Either way the response carries
//! [`Answered`], so metrics and spans learn the reason from a type, never by
//! parsing the header back.
//!
//! Only the listeners' edge ([`crate::edge`]) calls [`answer`].

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{Body, empty, full};
use crate::error::ProxyError;

pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-trellis-error");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Response extension: the proxy made this response, for this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered(pub ProxyError);

impl Answered {
    pub fn of<B>(rsp: &Response<B>) -> Option<ProxyError> {
        rsp.extensions().get::<Answered>().map(|a| a.0)
    }
}

/// How the caller reads an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Http,
    /// `content-type: application/grpc[+proto|;…]` (not gRPC-Web, whose
    /// trailers travel in the body).
    Grpc,
}

impl Caller {
    pub fn of(headers: &HeaderMap) -> Caller {
        let grpc = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')));
        if grpc { Caller::Grpc } else { Caller::Http }
    }
}

/// The response the caller gets for `result`: an upstream's response as it
/// is, an error as the caller's protocol says. A response a layer made on
/// purpose (a fallback) gets its `x-trellis-error` here too.
pub fn answer(result: Result<Response<Body>, ProxyError>, caller: Caller) -> Response<Body> {
    match result {
        Ok(mut rsp) => {
            if let Some(e) = Answered::of(&rsp) {
                rsp.headers_mut()
                    .insert(ERROR_HEADER, HeaderValue::from_static(e.reason()));
            }
            rsp
        }
        Err(e) => error_response(e, caller),
    }
}

fn error_response(e: ProxyError, caller: Caller) -> Response<Body> {
    let mut rsp = match caller {
        Caller::Http => {
            let mut rsp = Response::new(full(e.message()));
            *rsp.status_mut() = e.status();
            rsp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            rsp
        }
        Caller::Grpc => {
            let mut rsp = Response::new(empty());
            *rsp.status_mut() = StatusCode::OK;
            let h = rsp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(
                GRPC_STATUS,
                HeaderValue::from_static(e.grpc_status().as_str()),
            );
            // Messages are printable ASCII without `%`: nothing to percent-encode.
            h.insert(GRPC_MESSAGE, HeaderValue::from_static(e.message()));
            rsp
        }
    };
    if let ProxyError::RateLimited { retry_after } = e {
        // Whole seconds, at least one: a polite caller comes back when a token is there.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        rsp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    rsp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(e.reason()));
    rsp.extensions_mut().insert(Answered(e));
    rsp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    fn headers(ct: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        h
    }

    #[test]
    fn grpc_callers_are_told_by_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
        ] {
            assert_eq!(Caller::of(&headers(ct)), Caller::Grpc, "{ct}");
        }
        for ct in ["application/grpc-web", "application/json", "text/plain"] {
            assert_eq!(Caller::of(&headers(ct)), Caller::Http, "{ct}");
        }
        assert_eq!(Caller::of(&HeaderMap::new()), Caller::Http);
    }

    #[tokio::test]
    async fn http_callers_get_the_status_and_the_reason() {
        let rsp = answer(Err(ProxyError::Timeout), Caller::Http);
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.headers()["x-trellis-error"], "timeout");
        assert_eq!(Answered::of(&rsp), Some(ProxyError::Timeout));
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "request timed out");
    }

    #[tokio::test]
    async fn grpc_callers_get_a_trailers_only_answer() {
        for (e, code) in [
            (ProxyError::CircuitOpen, "14"),
            (ProxyError::ConnectFailure, "14"),
            (ProxyError::BulkheadFull, "14"),
            (ProxyError::Timeout, "4"),
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_millis(1),
                },
                "8",
            ),
            (ProxyError::UnknownUpstream, "12"),
        ] {
            let rsp = answer(Err(e), Caller::Grpc);
            assert_eq!(rsp.status(), 200);
            let h = rsp.headers();
            assert_eq!(h["content-type"], "application/grpc");
            assert_eq!(h["grpc-status"], code, "{e:?}");
            assert_eq!(h["grpc-message"], e.message());
            assert_eq!(h["x-trellis-error"], e.reason());
            assert!(rsp.body().is_end_stream(), "trailers-only: no body");
        }
    }

    #[test]
    fn rate_limited_says_when_to_come_back() {
        let e = |ms| ProxyError::RateLimited {
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(
            answer(Err(e(100)), Caller::Http).headers()["retry-after"],
            "1"
        );
        assert_eq!(
            answer(Err(e(2100)), Caller::Http).headers()["retry-after"],
            "3"
        );
        let rsp = answer(Err(e(2000)), Caller::Http);
        assert_eq!(rsp.status(), 429);
        assert_eq!(rsp.headers()["retry-after"], "2");
    }

    #[test]
    fn a_marked_response_gets_its_reason_header() {
        let mut rsp = Response::new(empty());
        rsp.extensions_mut()
            .insert(Answered(ProxyError::CircuitOpen));
        let rsp = answer(Ok(rsp), Caller::Http);
        assert_eq!(rsp.headers()["x-trellis-error"], "circuit-open");
        let plain = answer(Ok(Response::new(empty())), Caller::Http);
        assert!(!plain.headers().contains_key("x-trellis-error"));
    }
}
