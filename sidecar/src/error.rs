//! Errors the proxy itself answers with. Each becomes a response carrying
//! `x-trellis-error: <reason>`, so callers can tell a mesh failure from an app failure.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};

pub const ERROR_HEADER: &str = "x-trellis-error";

/// Why the proxy, not the app, produced a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProxyError {
    #[error("request timed out")]
    Timeout,
    #[error("circuit breaker is open")]
    CircuitOpen,
    #[error("retry budget exhausted")]
    BudgetExhausted,
    #[error("no endpoints available")]
    NoEndpoints,
    #[error("bulkhead is full")]
    BulkheadFull,
    #[error("rate limited")]
    RateLimited,
    #[error("concurrency limit reached")]
    Overloaded,
    #[error("unknown upstream")]
    UnknownUpstream,
    #[error("connection to upstream failed")]
    ConnectFailure,
    #[error("upstream reset the connection")]
    UpstreamReset,
    #[error("request loops through this proxy")]
    Loop,
    #[error("malformed request")]
    BadRequest,
    #[error("request headers too large")]
    HeadersTooLarge,
}

impl ProxyError {
    /// The `x-trellis-error` value and the `outcome` metric label.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::Timeout => "timeout",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::BudgetExhausted => "budget-exhausted",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::BulkheadFull => "bulkhead-full",
            ProxyError::RateLimited => "rate-limited",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UnknownUpstream => "unknown-upstream",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::UpstreamReset => "reset",
            ProxyError::Loop => "loop",
            ProxyError::BadRequest => "bad-request",
            ProxyError::HeadersTooLarge => "headers-too-large",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UnknownUpstream => StatusCode::NOT_FOUND,
            ProxyError::ConnectFailure | ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::CircuitOpen
            | ProxyError::BudgetExhausted
            | ProxyError::NoEndpoints
            | ProxyError::BulkheadFull
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response a client sees.
    pub fn into_response(self) -> Response<Body> {
        let mut rsp = Response::new(full(format!("{self}\n")));
        *rsp.status_mut() = self.status();
        rsp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        rsp
    }

    /// The proxy error an attempt's error stands for: a `ProxyError` anywhere
    /// in the source chain, else a connect failure, else a reset (the request
    /// may have reached the upstream).
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(p) = err.downcast_ref::<ProxyError>() {
                return *p;
            }
            if let Some(le) = err.downcast_ref::<hyper_util::client::legacy::Error>()
                && le.is_connect()
            {
                return ProxyError::ConnectFailure;
            }
            cur = err.source();
        }
        ProxyError::UpstreamReset
    }

    /// The reason of a response the proxy generated, if it did.
    pub fn of_response<B>(rsp: &Response<B>) -> Option<&str> {
        rsp.headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
    }
}
