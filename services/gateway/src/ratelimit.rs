//! A token bucket per client: `RATE_LIMIT_PER_SECOND` refill,
//! `RATE_LIMIT_BURST` capacity. An empty bucket answers 429 with
//! `Retry-After` (seconds until the next token).
//!
//! The client is the peer address — or, when the peer is on loopback (the
//! pod's own sidecar), the address the sidecar appended last to
//! `X-Forwarded-For`: the one entry a client cannot forge.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shop_common::Problem;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimit {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        RateLimit {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Forgets idle clients once a minute, until `shutdown`.
    pub fn spawn_housekeeping(&self, shutdown: CancellationToken) {
        let limiter = self.limiter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            }
        });
    }

    /// `Err(seconds to wait)` when `client` has no token left.
    fn check(&self, client: String) -> Result<(), u64> {
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

pub fn client_key(peer: SocketAddr, headers: &HeaderMap) -> String {
    if peer.ip().is_loopback()
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|s| !s.is_empty())
    {
        return last.to_string();
    }
    peer.ip().to_string()
}

pub async fn limit(
    State(rate): State<RateLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match rate.check(client_key(peer, request.headers())) {
        Ok(()) => next.run(request).await,
        Err(seconds) => {
            let seconds = seconds.max(1);
            Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .with_type("urn:shop:problem:rate-limited")
                .with_detail(format!("too many requests; retry in {seconds} s"))
                .with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_last_hop_the_sidecar_saw() {
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_key(loopback, &h), "127.0.0.1");
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.1.1.1"),
        );
        assert_eq!(client_key(loopback, &h), "10.1.1.1");
        h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
        assert_eq!(client_key(loopback, &h), "10.2.2.2");
        // Only the local sidecar is believed.
        assert_eq!(client_key(remote, &h), "10.0.0.7");
    }

    #[test]
    fn a_bucket_per_client() {
        let rate = RateLimit::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
        assert!(rate.check("a".into()).is_ok());
        assert!(rate.check("a".into()).is_ok());
        let wait = rate.check("a".into()).unwrap_err();
        assert!(wait <= 1, "{wait}");
        assert!(rate.check("b".into()).is_ok());
    }
}
