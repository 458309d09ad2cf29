//! Why the proxy, not the app, answers a request. Every layer below the
//! listeners' edge fails with a [`ProxyError`] (typed, never a string), and
//! the edge ([`crate::respond`]) is the one place it becomes a response.

use std::time::Duration;

use http::StatusCode;

/// A failure the proxy made (a refusal) or met (the upstream's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// The request timeout, a per-try timeout or the caller's `grpc-timeout` passed.
    Timeout,
    CircuitOpen,
    /// The last attempt failed and the retry budget allowed no other.
    BudgetExhausted,
    NoEndpoints,
    BulkheadFull,
    /// Over the inbound rate; a token is there after `retry_after`.
    RateLimited {
        retry_after: Duration,
    },
    /// Over the inbound concurrency limit.
    Overloaded,
    UnknownUpstream,
    ConnectFailure,
    /// The connection or stream ended before a response; the request may have been processed.
    UpstreamReset,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The upstream's HTTP/2 response broke the protocol's rules or this
    /// proxy's limits (a header list over `http.maxHeaderBytes`); the
    /// request may have been processed.
    BadResponse,
    /// The request already passed through this listener.
    Loop,
    /// The request head breaks HTTP's rules (RFC 9110/9112).
    BadRequest,
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
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UnknownUpstream => "unknown-upstream",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::UpstreamReset => "reset",
            ProxyError::RefusedStream => "refused-stream",
            ProxyError::BadResponse => "bad-response",
            ProxyError::Loop => "loop",
            ProxyError::BadRequest => "bad-request",
            ProxyError::HeadersTooLarge => "headers-too-large",
        }
    }

    /// What a person reads: the body of an HTTP answer, the `grpc-message` of a gRPC one.
    pub fn message(self) -> &'static str {
        match self {
            ProxyError::Timeout => "request timed out",
            ProxyError::CircuitOpen => "circuit breaker is open",
            ProxyError::BudgetExhausted => "retry budget exhausted",
            ProxyError::NoEndpoints => "no endpoints available",
            ProxyError::BulkheadFull => "bulkhead is full",
            ProxyError::RateLimited { .. } => "rate limited",
            ProxyError::Overloaded => "concurrency limit reached",
            ProxyError::UnknownUpstream => "unknown upstream",
            ProxyError::ConnectFailure => "connection to upstream failed",
            ProxyError::UpstreamReset => "upstream reset the connection",
            ProxyError::RefusedStream => "upstream refused the stream",
            ProxyError::BadResponse => {
                "upstream response refused: malformed, or its headers over the limit"
            }
            ProxyError::Loop => "request loops through this proxy",
            ProxyError::BadRequest => "malformed request",
            ProxyError::HeadersTooLarge => "request headers too large",
        }
    }

    /// The HTTP status of the answer to an HTTP caller.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UnknownUpstream => StatusCode::NOT_FOUND,
            ProxyError::ConnectFailure
            | ProxyError::UpstreamReset
            | ProxyError::RefusedStream
            | ProxyError::BadResponse => StatusCode::BAD_GATEWAY,
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

    /// The `grpc-status` of the answer to a gRPC caller: what a gRPC client
    /// should do about it. UNAVAILABLE says "try again, maybe elsewhere";
    /// the others are not worth retrying as they are.
    pub fn grpc_status(self) -> GrpcCode {
        match self {
            ProxyError::Timeout => GrpcCode::DeadlineExceeded,
            ProxyError::RateLimited { .. } | ProxyError::HeadersTooLarge => {
                GrpcCode::ResourceExhausted
            }
            ProxyError::UnknownUpstream => GrpcCode::Unimplemented,
            ProxyError::Loop | ProxyError::BadRequest | ProxyError::BadResponse => {
                GrpcCode::Internal
            }
            ProxyError::CircuitOpen
            | ProxyError::BudgetExhausted
            | ProxyError::NoEndpoints
            | ProxyError::BulkheadFull
            | ProxyError::Overloaded
            | ProxyError::ConnectFailure
            | ProxyError::UpstreamReset
            | ProxyError::RefusedStream => GrpcCode::Unavailable,
        }
    }
}

impl ProxyError {
    /// What a failed exchange with an endpoint stands for, from the client's
    /// error: a `ProxyError` anywhere in its source chain (a stalled body,
    /// a timeout), an HTTP/2 refusal or reset, a connect failure, else a
    /// reset (the request may have reached the upstream, which is what
    /// `reset` means to `retryOn`).
    pub fn of_client_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(p) = err.downcast_ref::<ProxyError>() {
                return *p;
            }
            if let Some(h2e) = err.downcast_ref::<h2::Error>() {
                if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return ProxyError::RefusedStream;
                }
                // h2 itself reset the stream over what the upstream sent.
                if h2e.is_reset()
                    && h2e.is_library()
                    && h2e.reason() == Some(h2::Reason::PROTOCOL_ERROR)
                {
                    return ProxyError::BadResponse;
                }
                if h2e.is_reset() || h2e.is_go_away() || h2e.is_io() {
                    return ProxyError::UpstreamReset;
                }
            }
            if let Some(le) = err.downcast_ref::<hyper_util::client::legacy::Error>()
                && le.is_connect()
            {
                return ProxyError::ConnectFailure;
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable => {
                        return ProxyError::ConnectFailure;
                    }
                    TimedOut => return ProxyError::Timeout,
                    _ => {}
                }
                // An I/O error's `source` skips the error it wraps.
                if let Some(inner) = io.get_ref() {
                    cur = Some(inner);
                    continue;
                }
            }
            cur = err.source();
        }
        ProxyError::UpstreamReset
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ProxyError {}

/// The gRPC status codes the proxy answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl GrpcCode {
    /// The `grpc-status` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::DeadlineExceeded => "4",
            GrpcCode::ResourceExhausted => "8",
            GrpcCode::Unimplemented => "12",
            GrpcCode::Internal => "13",
            GrpcCode::Unavailable => "14",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_classified_by_their_source_chain() {
        let of = |e: Box<dyn std::error::Error + Send + Sync>| ProxyError::of_client_error(&*e);
        assert_eq!(
            of(Box::new(ProxyError::ConnectFailure)),
            ProxyError::ConnectFailure
        );
        assert_eq!(of(Box::new(ProxyError::Timeout)), ProxyError::Timeout);
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(of(Box::new(refused)), ProxyError::RefusedStream);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(of(Box::new(io)), ProxyError::ConnectFailure);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(of(Box::new(reset)), ProxyError::UpstreamReset);
        // Wrapped: found down the chain.
        let wrapped = std::io::Error::other(ProxyError::Timeout);
        assert_eq!(of(Box::new(wrapped)), ProxyError::Timeout);
        assert_eq!(of("mystery".into()), ProxyError::UpstreamReset);
    }
}
