//! Outlier detection: take one bad endpoint out of rotation, not the service.
//!
//! An endpoint that fails `consecutiveFailures` times in a row is ejected for
//! `baseEjection × times ejected`, capped at [`MAX_EJECTION`] (or
//! `baseEjection` if that is longer) — Envoy's default cap, long enough to
//! stop hammering a dead pod, short enough that a repaired one is back within
//! minutes. Every `baseEjection` an endpoint spends back in rotation forgives
//! one past ejection, so a pod that failed once last week starts afresh.
//!
//! Ejection never takes more than `maxEjectionPercent` of the endpoints, and
//! never the only one: when everything fails, the breaker is the right tool,
//! and a balancer with no endpoints has nothing left to try.
//!
//! [`OutlierDetector`] is plain state keyed by endpoint address, installed in
//! the upstream's [`EndpointSet`] twice: as its [`EndpointFilter`] (asked at
//! every pick) and as its [`OutcomeObserver`] (told every attempt's outcome
//! by the attempt service, which knows the endpoint even when the attempt
//! fails or times out).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use trellis_api::proxy;

use super::classify;
use crate::balance::{Endpoint, EndpointFilter, EndpointSet, Outcome, OutcomeObserver};

/// The longest ejection, unless `baseEjection` itself is longer.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    /// When it last came back from an ejection.
    returned_at: Option<Instant>,
}

impl Health {
    /// Whether it is ejected at `now`, noticing a finished ejection.
    fn check(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if now < until => true,
            Some(until) => {
                self.ejected_until = None;
                self.returned_at = Some(until);
                self.consecutive_failures = 0;
                false
            }
            None => false,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<SocketAddr, Health>,
    /// The endpoint count from discovery, once told.
    known: Option<usize>,
}

/// Per-endpoint failure tracking of one upstream.
#[derive(Debug)]
pub struct OutlierDetector {
    consecutive_failures: u32,
    base: Duration,
    max_ejection: Duration,
    max_percent: u64,
    peer: Arc<str>,
    inner: Mutex<Inner>,
}

impl OutlierDetector {
    pub fn new(cfg: &proxy::OutlierDetection, peer: &str) -> Self {
        OutlierDetector {
            consecutive_failures: cfg.consecutive_failures.get(),
            base: cfg.base_ejection.as_std(),
            max_ejection: MAX_EJECTION.max(cfg.base_ejection.as_std()),
            max_percent: u64::from(cfg.max_ejection_percent.get()),
            peer: peer.into(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the detector the current endpoints (from discovery): the base of
    /// `maxEjectionPercent`. State of endpoints that left is forgotten.
    /// Without it, every endpoint ever recorded counts.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) {
        let mut inner = self.lock();
        let before = inner.endpoints.len();
        inner.endpoints.retain(|a, _| addrs.contains(a));
        inner.known = Some(addrs.len());
        if before != inner.endpoints.len() {
            tracing::debug!(peer = %self.peer, endpoints = addrs.len(), "outlier detection: endpoints changed");
        }
    }

    /// Records one attempt's outcome on `addr`.
    pub fn record(&self, addr: SocketAddr, success: bool, now: Instant) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let total = match inner.known {
            Some(n) => n,
            None => inner.endpoints.len() + usize::from(!inner.endpoints.contains_key(&addr)),
        };
        let ejected_others = inner
            .endpoints
            .iter()
            .filter(|(a, _)| **a != addr)
            .filter(|(_, e)| e.ejected_until.is_some_and(|u| now < u))
            .count() as u64;
        let e = inner.endpoints.entry(addr).or_default();
        if e.check(now) {
            // An attempt that started before the ejection; it changes nothing.
            return;
        }
        if success {
            e.consecutive_failures = 0;
            return;
        }
        e.consecutive_failures = e.consecutive_failures.saturating_add(1);
        if e.consecutive_failures < self.consecutive_failures {
            return;
        }
        let total = total as u64;
        if total < 2 || (ejected_others + 1) * 100 > self.max_percent * total {
            // No room: it stays, and is ejected as soon as there is room.
            return;
        }
        if let (Some(back), false) = (e.returned_at, self.base.is_zero()) {
            let forgiven = now.saturating_duration_since(back).as_nanos() / self.base.as_nanos();
            let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
            e.times_ejected = e.times_ejected.saturating_sub(forgiven);
        }
        e.times_ejected = e.times_ejected.saturating_add(1);
        let duration = self
            .base
            .checked_mul(e.times_ejected)
            .map_or(self.max_ejection, |d| d.min(self.max_ejection));
        e.ejected_until = Some(now + duration);
        e.consecutive_failures = 0;
        tracing::warn!(peer = %self.peer, endpoint = %addr, times = e.times_ejected, for_ = ?duration, "endpoint ejected");
    }

    /// Whether the balancer should skip `addr` now.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.endpoints.get_mut(&addr).is_some_and(|e| e.check(now))
    }

    /// How many endpoints are ejected now.
    #[cfg(test)]
    fn ejected_count(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        inner
            .endpoints
            .values_mut()
            .map(|e| e.check(now))
            .filter(|ejected| *ejected)
            .count()
    }
}

/// The balancer asks at every pick, and tells the endpoints after each discovery update.
impl EndpointFilter for OutlierDetector {
    fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        OutlierDetector::is_ejected(self, addr, now)
    }

    fn set_endpoints(&self, addrs: &[SocketAddr]) {
        OutlierDetector::set_endpoints(self, addrs)
    }
}

/// The attempt service reports every attempt to every endpoint here.
impl OutcomeObserver for OutlierDetector {
    fn record(&self, _set: &EndpointSet, endpoint: &Arc<Endpoint>, outcome: Outcome) {
        OutlierDetector::record(self, endpoint.addr(), !is_failure(&outcome), Instant::now());
    }
}

/// What counts against an endpoint: 5xx, a failing gRPC status (from the
/// head or, for a gRPC body, the trailers: the attempt reports once they
/// came), an error before the head, or an attempt cut by a timeout
/// (`Cancelled`: a slow endpoint is as bad as a failing one).
fn is_failure(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Response {
            status,
            grpc_status,
            ..
        } => {
            status.is_server_error()
                || grpc_status.is_some_and(|c| classify::GRPC_FAILURE_CODES.contains(&c))
        }
        Outcome::Failed { .. } | Outcome::Cancelled { .. } => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::Bounded;

    fn detector(max_percent: u32) -> OutlierDetector {
        OutlierDetector::new(
            &proxy::OutlierDetection {
                consecutive_failures: Bounded::new_const(3),
                base_ejection: ApiDuration::from_secs(30),
                max_ejection_percent: Bounded::new(max_percent).unwrap(),
            },
            "orders",
        )
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    fn fail(d: &OutlierDetector, a: SocketAddr, n: u32, now: Instant) {
        for _ in 0..n {
            d.record(a, false, now);
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_returns() {
        let d = detector(50);
        d.set_endpoints(&[addr(1), addr(2), addr(3)]);
        let t0 = Instant::now();
        fail(&d, addr(1), 2, t0);
        d.record(addr(1), true, t0); // a success resets the run
        fail(&d, addr(1), 2, t0);
        assert!(!d.is_ejected(addr(1), t0));
        fail(&d, addr(1), 1, t0);
        assert!(d.is_ejected(addr(1), t0));
        assert_eq!(d.ejected_count(t0), 1);
        let t = |s| t0 + Duration::from_secs(s);
        assert!(d.is_ejected(addr(1), t(29)));
        assert!(!d.is_ejected(addr(1), t(30)));
        assert_eq!(d.ejected_count(t(30)), 0);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap_and_decays() {
        let d = detector(50);
        d.set_endpoints(&[addr(1), addr(2)]);
        let mut t = Instant::now();
        for n in 1..=12u64 {
            fail(&d, addr(1), 3, t);
            let expected = Duration::from_secs((30 * n).min(300));
            assert!(
                d.is_ejected(addr(1), t + expected - Duration::from_millis(1)),
                "#{n}"
            );
            assert!(!d.is_ejected(addr(1), t + expected), "#{n}");
            t += expected;
        }
        // 300 s healthy forgive ten of the twelve ejections: the next is the third, 90 s.
        t += Duration::from_secs(300);
        fail(&d, addr(1), 3, t);
        assert!(d.is_ejected(addr(1), t + Duration::from_secs(89)));
        assert!(!d.is_ejected(addr(1), t + Duration::from_secs(90)));
    }

    #[test]
    fn never_more_than_max_percent_nor_the_only_endpoint() {
        let t0 = Instant::now();
        let single = detector(100);
        single.set_endpoints(&[addr(1)]);
        fail(&single, addr(1), 10, t0);
        assert!(!single.is_ejected(addr(1), t0));

        let d = detector(50);
        d.set_endpoints(&[addr(1), addr(2), addr(3), addr(4)]);
        for i in 1..=4 {
            fail(&d, addr(i), 3, t0);
        }
        assert_eq!(d.ejected_count(t0), 2);
        assert!(d.is_ejected(addr(1), t0) && d.is_ejected(addr(2), t0));
        // When one returns, the next failure of a waiting endpoint ejects it.
        let t = t0 + Duration::from_secs(30);
        fail(&d, addr(3), 1, t);
        assert!(d.is_ejected(addr(3), t));
        assert_eq!(d.ejected_count(t), 1);
    }

    #[test]
    fn without_discovery_recorded_endpoints_are_the_base() {
        let d = detector(50);
        let t0 = Instant::now();
        fail(&d, addr(1), 3, t0);
        // Only one endpoint known: never ejected.
        assert!(!d.is_ejected(addr(1), t0));
        d.record(addr(2), true, t0);
        fail(&d, addr(1), 1, t0);
        assert!(d.is_ejected(addr(1), t0));
    }

    #[test]
    fn forgets_endpoints_that_left() {
        let d = detector(50);
        d.set_endpoints(&[addr(1), addr(2)]);
        let t0 = Instant::now();
        fail(&d, addr(1), 3, t0);
        assert_eq!(d.ejected_count(t0), 1);
        d.set_endpoints(&[addr(2), addr(3)]);
        assert_eq!(d.ejected_count(t0), 0);
        assert!(!d.is_ejected(addr(1), t0));
    }

    #[test]
    fn balancer_hooks_eject_and_skip() {
        use std::time::Duration as D;
        let d = Arc::new(detector(50));
        let set = EndpointSet::new("orders");
        set.set_filter(Some(d.clone()));
        set.set_observer(Some(d.clone()));
        let a1 = SocketAddr::from(([127, 0, 0, 1], 1));
        let a2 = SocketAddr::from(([127, 0, 0, 1], 2));
        set.update([a1, a2]);
        let bad = set
            .snapshot()
            .iter()
            .find(|e| e.addr() == a1)
            .unwrap()
            .clone();
        let fail = Outcome::Response {
            status: http::StatusCode::BAD_GATEWAY,
            grpc_status: None,
            latency: D::from_millis(1),
        };
        let grpc_ok = Outcome::Response {
            status: http::StatusCode::OK,
            grpc_status: Some(5),
            latency: D::from_millis(1),
        };
        set.record(&bad, fail);
        set.record(&bad, grpc_ok);
        set.record(&bad, fail);
        set.record(
            &bad,
            Outcome::Cancelled {
                latency: D::from_secs(1),
            },
        );
        assert!(!d.is_ejected(a1, Instant::now()));
        set.record(
            &bad,
            Outcome::Failed {
                error: crate::error::ProxyError::ConnectFailure,
                latency: D::ZERO,
            },
        );
        assert!(d.is_ejected(a1, Instant::now()));
        for _ in 0..20 {
            assert_eq!(set.pick(&[]).map(|e| e.addr()), Some(a2));
        }
    }
}
