//! The circuit breaker: stop calling an upstream that is failing, so it can
//! recover and our callers fail fast instead of queueing behind timeouts.
//!
//! ```text
//!            failure rate ≥ threshold (≥ minimumRequests in window)
//!            or consecutiveFailures in a row, or slow-call rate ≥ threshold
//!   Closed ──────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                 │ openDuration
//!     │ all halfOpenRequests probes succeed                             ▼ (×2 per re-open,
//!     └──────────────────────────── HalfOpen ◀──────────────────────────┘  ≤ max, jittered)
//!                                       │ any probe fails or is slow
//!                                       └──────────────────────────▶ Open (longer)
//! ```
//!
//! One breaker per upstream, or per route when the route's breaker settings
//! differ. It sits outside the retry layer, so it judges what the caller got
//! (a request that succeeded on its second attempt is a success) and one
//! failing request counts once, not once per attempt.
//!
//! Rejecting is the hot path when an upstream is down: it is two atomic loads,
//! no lock and no allocation. Admitting while closed takes no lock either;
//! recording an outcome takes one short lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus::{IntCounter, IntGauge};
use rand::Rng;
use tokio::time::Instant;
use tower::{Layer, Service};
use trellis_api::proxy;

use super::classify::{self, Class, Observe};
use super::timeout::Deadline;
use super::window::SlidingWindow;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Open durations are shortened by up to this share, at random, so the
/// breakers of many callers do not probe a recovering upstream in lockstep.
const OPEN_JITTER: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    total: u64,
    failures: u64,
    slow: u64,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition; an outcome from an older epoch is ignored.
    epoch: u64,
    window: SlidingWindow<Counts>,
    consecutive_failures: u32,
    /// Re-opens since the breaker was last closed: the exponent of the open time.
    reopens: u32,
    probes_admitted: u32,
    probes_succeeded: u32,
}

#[derive(Debug)]
struct Gauges {
    state: IntGauge,
    to_closed: IntCounter,
    to_open: IntCounter,
    to_half_open: IntCounter,
}

/// The state of one breaker; shared by every request it guards.
#[derive(Debug)]
pub struct CircuitBreaker {
    cfg: proxy::CircuitBreaker,
    peer: Arc<str>,
    gauges: Gauges,
    base: Instant,
    /// Fast path: the state and, while open, until when (nanos since `base`).
    state: AtomicU8,
    epoch: AtomicU64,
    open_until: AtomicU64,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(cfg: &proxy::CircuitBreaker, peer: &str, metrics: &Metrics) -> Self {
        let base = Instant::now();
        let to = |s: &str| {
            metrics
                .circuit_transitions_total
                .with_label_values(&[peer, s])
        };
        let gauges = Gauges {
            state: metrics.circuit_state.with_label_values(&[peer]),
            to_closed: to("closed"),
            to_open: to("open"),
            to_half_open: to("half-open"),
        };
        gauges.state.set(0);
        CircuitBreaker {
            cfg: cfg.clone(),
            peer: peer.into(),
            gauges,
            base,
            state: AtomicU8::new(State::Closed as u8),
            epoch: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state: State::Closed,
                epoch: 0,
                window: SlidingWindow::new(cfg.window.as_std(), base),
                consecutive_failures: 0,
                reopens: 0,
                probes_admitted: 0,
                probes_succeeded: 0,
            }),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call, or `None` while open (or half-open with every probe out).
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        let state = self.state.load(Ordering::Acquire);
        if state == State::Closed as u8 {
            // Closed: no lock. A transition racing this makes the epoch stale
            // and the outcome ignored, which is harmless.
            return Some(self.permit(self.epoch.load(Ordering::Acquire), now));
        }
        if state == State::Open as u8 && self.nanos(now) < self.open_until.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        if inner.state == State::Open {
            if self.nanos(now) < self.open_until.load(Ordering::Acquire) {
                return None;
            }
            self.transition(&mut inner, State::HalfOpen, now, "open duration elapsed");
        }
        if inner.state == State::HalfOpen {
            if inner.probes_admitted >= self.cfg.half_open_requests.get() {
                return None;
            }
            inner.probes_admitted += 1;
        }
        Some(self.permit(inner.epoch, now))
    }

    fn permit(self: &Arc<Self>, epoch: u64, now: Instant) -> Permit {
        Permit {
            breaker: self.clone(),
            epoch,
            start: now,
            elapsed: None,
            deadline: None,
            done: false,
        }
    }

    fn on_outcome(&self, epoch: u64, failure: bool, elapsed: Duration, now: Instant) {
        let slow = self
            .cfg
            .slow_call
            .as_ref()
            .is_some_and(|s| elapsed >= s.threshold.as_std());
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        match inner.state {
            State::Closed => {
                let bucket = inner.window.current(now);
                bucket.total += 1;
                bucket.failures += u64::from(failure);
                bucket.slow += u64::from(slow);
                inner.consecutive_failures = if failure {
                    inner.consecutive_failures + 1
                } else {
                    0
                };
                if let Some(reason) = self.trip_reason(&inner, now) {
                    inner.reopens = 0;
                    self.transition(&mut inner, State::Open, now, reason);
                }
            }
            State::HalfOpen if failure || slow => {
                inner.reopens = inner.reopens.saturating_add(1);
                let reason = if failure {
                    "probe failed"
                } else {
                    "probe was slow"
                };
                self.transition(&mut inner, State::Open, now, reason);
            }
            State::HalfOpen => {
                inner.probes_succeeded += 1;
                if inner.probes_succeeded >= self.cfg.half_open_requests.get() {
                    self.transition(&mut inner, State::Closed, now, "probes succeeded");
                }
            }
            State::Open => {}
        }
    }

    /// A half-open probe ended without an outcome (cancelled): free its slot.
    fn on_release(&self, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch == epoch && inner.state == State::HalfOpen {
            inner.probes_admitted = inner.probes_admitted.saturating_sub(1);
        }
    }

    fn trip_reason(&self, inner: &Inner, now: Instant) -> Option<&'static str> {
        if inner.consecutive_failures >= self.cfg.consecutive_failures.get() {
            return Some("consecutive failures");
        }
        let sum = inner
            .window
            .live(now)
            .fold(Counts::default(), |a, c| Counts {
                total: a.total + c.total,
                failures: a.failures + c.failures,
                slow: a.slow + c.slow,
            });
        if sum.total < u64::from(self.cfg.minimum_requests.get()) {
            return None;
        }
        let rate_reached = |n: u64, pct: u32| n > 0 && n * 100 >= u64::from(pct) * sum.total;
        if rate_reached(sum.failures, self.cfg.failure_rate_threshold.get()) {
            return Some("failure rate");
        }
        if let Some(slow) = &self.cfg.slow_call
            && rate_reached(sum.slow, slow.rate_threshold.get())
        {
            return Some("slow-call rate");
        }
        None
    }

    /// How long to stay open after `reopens` re-opens in a row.
    fn open_duration(&self, reopens: u32) -> Duration {
        let max = self
            .cfg
            .max_open_duration
            .as_std()
            .max(self.cfg.open_duration.as_std());
        let full = self
            .cfg
            .open_duration
            .as_std()
            .checked_mul(1u32 << reopens.min(31))
            .map_or(max, |d| d.min(max));
        full.mul_f64(1.0 - OPEN_JITTER * rand::rng().random::<f64>())
    }

    fn transition(&self, inner: &mut Inner, to: State, now: Instant, reason: &str) {
        let from = inner.state;
        inner.state = to;
        inner.epoch += 1;
        match to {
            State::Open => {
                let d = self.open_duration(inner.reopens);
                self.open_until
                    .store(self.nanos(now + d), Ordering::Release);
                self.gauges.to_open.inc();
                tracing::warn!(peer = %self.peer, from = from.as_str(), reason, open_for = ?d, "circuit opened");
            }
            State::HalfOpen => {
                inner.probes_admitted = 0;
                inner.probes_succeeded = 0;
                self.gauges.to_half_open.inc();
                tracing::info!(peer = %self.peer, reason, "circuit half-open");
            }
            State::Closed => {
                inner.window.clear();
                inner.consecutive_failures = 0;
                inner.reopens = 0;
                self.gauges.to_closed.inc();
                tracing::info!(peer = %self.peer, reason, "circuit closed");
            }
        }
        self.gauges.state.set(to as i64);
        self.epoch.store(inner.epoch, Ordering::Release);
        self.state.store(to as u8, Ordering::Release);
    }
}

/// Leave to make one call. Record its outcome; dropped without one, it counts
/// as a failure if the call's [`Deadline`] passed (it timed out), else as
/// nothing (the caller went away).
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    epoch: u64,
    start: Instant,
    /// Latency frozen at the response head (streaming time is not "slow").
    elapsed: Option<Duration>,
    deadline: Option<Instant>,
    done: bool,
}

impl Permit {
    pub fn record(mut self, failure: bool, now: Instant) {
        self.done = true;
        let elapsed = self
            .elapsed
            .unwrap_or_else(|| now.saturating_duration_since(self.start));
        self.breaker.on_outcome(self.epoch, failure, elapsed, now);
    }

    fn record_class(self, class: Class, now: Instant) {
        match class {
            Class::Success => self.record(false, now),
            Class::Failure => self.record(true, now),
            Class::Neutral => drop(self),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            let elapsed = self
                .elapsed
                .unwrap_or_else(|| now.saturating_duration_since(self.start));
            self.breaker.on_outcome(self.epoch, true, elapsed, now);
        } else {
            self.breaker.on_release(self.epoch);
        }
    }
}

/// Guards calls with a shared [`CircuitBreaker`]; open: `ProxyError::CircuitOpen`.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        CircuitBreakerLayer { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S> Service<Request<Body>> for Breaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.breaker.try_acquire(Instant::now()) {
            None => ResponseFuture::Rejected,
            Some(mut permit) => {
                permit.deadline = req.extensions().get::<Deadline>().map(|d| d.0);
                ResponseFuture::Admitted {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                }
            }
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Rejected,
        Admitted { #[pin] fut: F, permit: Option<Permit> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (fut, permit) = match self.project() {
            Proj::Rejected => return Poll::Ready(Err(ProxyError::CircuitOpen)),
            Proj::Admitted { fut, permit } => (fut, permit),
        };
        let result = std::task::ready!(fut.poll(cx));
        let Some(mut permit) = permit.take() else {
            return Poll::Ready(result);
        };
        let now = Instant::now();
        match result {
            Err(e) => {
                permit.record_class(classify::error(e), now);
                Poll::Ready(Err(e))
            }
            Ok(rsp) => match classify::head(&rsp) {
                Some(class) => {
                    permit.record_class(class, now);
                    Poll::Ready(Ok(rsp))
                }
                None => {
                    // gRPC: the status comes in the trailers. Latency is the head's.
                    permit.elapsed = Some(now.saturating_duration_since(permit.start));
                    let rsp = rsp.map(|body| {
                        Observe::wrap(body, move |end| {
                            permit.record_class(classify::end(end), Instant::now())
                        })
                    });
                    Poll::Ready(Ok(rsp))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::Bounded;

    fn cfg() -> proxy::CircuitBreaker {
        proxy::CircuitBreaker {
            failure_rate_threshold: Bounded::new_const(50),
            minimum_requests: Bounded::new_const(10),
            window: ApiDuration::from_secs(10),
            consecutive_failures: Bounded::new_const(5),
            open_duration: ApiDuration::from_secs(5),
            max_open_duration: ApiDuration::from_secs(60),
            half_open_requests: Bounded::new_const(2),
            slow_call: Some(proxy::SlowCall {
                threshold: ApiDuration::from_secs(1),
                rate_threshold: Bounded::new_const(80),
            }),
        }
    }

    struct Fixture {
        b: Arc<CircuitBreaker>,
        metrics: Metrics,
        t0: Instant,
    }

    fn fixture(cfg: proxy::CircuitBreaker) -> Fixture {
        let metrics = Metrics::new();
        let b = Arc::new(CircuitBreaker::new(&cfg, "payments", &metrics));
        Fixture {
            t0: b.base,
            b,
            metrics,
        }
    }

    impl Fixture {
        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }
        /// One call at `t` lasting `latency`, failing or not.
        fn call(&self, t: f64, failure: bool, latency: f64) {
            let start = self.at(t);
            let p = self.b.try_acquire(start).expect("admitted");
            p.record(failure, start + Duration::from_secs_f64(latency));
        }
        fn transitions(&self, to: &str) -> u64 {
            self.metrics
                .circuit_transitions_total
                .with_label_values(&["payments", to])
                .get()
        }
        fn gauge(&self) -> i64 {
            self.metrics
                .circuit_state
                .with_label_values(&["payments"])
                .get()
        }
        /// Open, and opened for between 90 % and 100 % of `secs` from `t`.
        fn assert_open_for(&self, t: f64, secs: f64) {
            assert_eq!(self.b.state(), State::Open);
            assert!(
                self.b
                    .try_acquire(self.at(t + secs * 0.9 - 0.001))
                    .is_none()
            );
            let p = self.b.try_acquire(self.at(t + secs + 0.001));
            assert!(p.is_some(), "still open after {secs}s");
            assert_eq!(self.b.state(), State::HalfOpen);
            drop(p);
        }
    }

    #[test]
    fn stays_closed_below_minimum_requests() {
        let f = fixture(proxy::CircuitBreaker {
            consecutive_failures: Bounded::new_const(100),
            ..cfg()
        });
        // 9 failures of 9: rate 100 % but below minimumRequests (10).
        for i in 0..9 {
            f.call(i as f64 * 0.1, true, 0.0);
        }
        assert_eq!(f.b.state(), State::Closed);
        f.call(1.0, true, 0.0);
        assert_eq!(f.b.state(), State::Open);
        assert_eq!(f.gauge(), 1);
        assert_eq!(f.transitions("open"), 1);
    }

    #[test]
    fn opens_on_failure_rate_not_below_it() {
        let f = fixture(cfg());
        // 4 of 10 fail (40 % < 50 %), never 5 in a row.
        for i in 0..10 {
            f.call(i as f64 * 0.1, i % 5 < 2, 0.0);
        }
        assert_eq!(f.b.state(), State::Closed);
        // One more failure: 5 of 11 = 45 %; another: 6 of 12 = 50 %.
        f.call(1.1, true, 0.0);
        assert_eq!(f.b.state(), State::Closed);
        f.call(1.2, true, 0.0);
        assert_eq!(f.b.state(), State::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let f = fixture(proxy::CircuitBreaker {
            consecutive_failures: Bounded::new_const(100),
            ..cfg()
        });
        for i in 0..8 {
            f.call(i as f64 * 0.1, true, 0.0);
        }
        // Much later: old failures left the window; 8 failures of 10 recent calls needed again.
        for i in 0..9 {
            f.call(20.0 + i as f64 * 0.1, false, 0.0);
        }
        f.call(21.0, true, 0.0);
        assert_eq!(f.b.state(), State::Closed);
    }

    #[test]
    fn opens_on_consecutive_failures_before_minimum_requests() {
        let f = fixture(cfg());
        f.call(0.0, false, 0.0);
        for i in 1..5 {
            f.call(i as f64 * 0.01, true, 0.0);
        }
        assert_eq!(f.b.state(), State::Closed);
        f.call(0.05, true, 0.0);
        assert_eq!(f.b.state(), State::Open);
    }

    #[test]
    fn a_success_resets_the_run() {
        let f = fixture(cfg());
        for i in 0..8 {
            // fail, fail, fail, fail, ok, …: never five in a row; 8 calls < minimum.
            f.call(i as f64 * 0.01, i != 4, 0.0);
        }
        assert_eq!(f.b.state(), State::Closed);
    }

    #[test]
    fn opens_on_slow_call_rate() {
        let f = fixture(cfg());
        // 8 of 10 calls slower than 1 s, all successful.
        for i in 0..10 {
            let latency = if i >= 2 { 1.5 } else { 0.1 };
            f.call(i as f64 * 0.2, false, latency);
            if i < 9 {
                assert_eq!(f.b.state(), State::Closed);
            }
        }
        assert_eq!(f.b.state(), State::Open);
    }

    #[test]
    fn full_cycle_with_exponential_open_time_and_half_open_failure() {
        let f = fixture(cfg());
        for i in 0..5 {
            f.call(i as f64 * 0.01, true, 0.0);
        }
        // Open for 5 s (jittered down by at most 10 %).
        f.assert_open_for(0.04, 5.0);
        assert_eq!(f.transitions("half-open"), 1);
        assert_eq!(f.gauge(), 2);
        // Half-open: 2 probes, the third waits. A failing probe re-opens for 10 s.
        let t = 5.04;
        let p1 = f.b.try_acquire(f.at(t)).unwrap();
        let p2 = f.b.try_acquire(f.at(t)).unwrap();
        assert!(
            f.b.try_acquire(f.at(t)).is_none(),
            "only halfOpenRequests probes"
        );
        p1.record(true, f.at(t));
        drop(p2);
        f.assert_open_for(t, 10.0);
        // And again: 20 s.
        let t = t + 10.0;
        f.b.try_acquire(f.at(t)).unwrap().record(true, f.at(t));
        f.assert_open_for(t, 20.0);
        // 40, then capped at maxOpenDuration 60.
        let t = t + 20.0;
        f.b.try_acquire(f.at(t)).unwrap().record(true, f.at(t));
        f.assert_open_for(t, 40.0);
        let t = t + 40.0;
        f.b.try_acquire(f.at(t)).unwrap().record(true, f.at(t));
        f.assert_open_for(t, 60.0);
        // Probes succeed: closed, and the next open is back to 5 s.
        let t = t + 60.0;
        let p1 = f.b.try_acquire(f.at(t)).unwrap();
        let p2 = f.b.try_acquire(f.at(t)).unwrap();
        p1.record(false, f.at(t));
        assert_eq!(f.b.state(), State::HalfOpen);
        p2.record(false, f.at(t));
        assert_eq!(f.b.state(), State::Closed);
        assert_eq!(f.gauge(), 0);
        assert_eq!(f.transitions("closed"), 1);
        for i in 0..5 {
            f.call(t + i as f64 * 0.01, true, 0.0);
        }
        f.assert_open_for(t + 0.04, 5.0);
        assert_eq!(f.transitions("open"), 6);
    }

    #[test]
    fn slow_probe_reopens_and_cancelled_probe_frees_its_slot() {
        let f = fixture(cfg());
        for i in 0..5 {
            f.call(i as f64 * 0.01, true, 0.0);
        }
        f.assert_open_for(0.04, 5.0);
        let t = 5.04;
        let p1 = f.b.try_acquire(f.at(t)).unwrap();
        let p2 = f.b.try_acquire(f.at(t)).unwrap();
        drop(p1); // cancelled: its slot is free again
        let p3 = f.b.try_acquire(f.at(t)).unwrap();
        p2.record(false, f.at(t + 0.1));
        p3.record(false, f.at(t + 1.5)); // slow
        f.assert_open_for(t + 1.5, 10.0);
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let f = fixture(cfg());
        let old = f.b.try_acquire(f.at(0.0)).unwrap();
        for i in 0..5 {
            f.call(0.01 * i as f64, true, 0.0);
        }
        let t = 5.1;
        let probe = f.b.try_acquire(f.at(t)).unwrap();
        // A call admitted while closed ends during half-open: not a probe.
        old.record(true, f.at(t));
        assert_eq!(f.b.state(), State::HalfOpen);
        probe.record(false, f.at(t));
        assert_eq!(f.b.state(), State::HalfOpen);
    }

    fn svc(
        status: u16,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = impl Future<Output = Result<Response<Body>, ProxyError>>,
    > + Clone {
        tower::service_fn(move |_req: Request<Body>| async move {
            let mut r = Response::new(body::empty());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok(r)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn layer_counts_5xx_not_4xx_and_rejects_when_open() {
        use tower::ServiceExt;
        let f = fixture(cfg());
        let layer = CircuitBreakerLayer::new(f.b.clone());
        for _ in 0..20 {
            let rsp = layer
                .layer(svc(404))
                .oneshot(Request::new(body::empty()))
                .await;
            assert_eq!(rsp.unwrap().status(), 404);
        }
        assert_eq!(f.b.state(), State::Closed);
        for _ in 0..5 {
            let _ = layer
                .layer(svc(503))
                .oneshot(Request::new(body::empty()))
                .await;
        }
        assert_eq!(f.b.state(), State::Open);
        let err = layer
            .layer(svc(200))
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap_err();
        assert_eq!(err, ProxyError::CircuitOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_reads_grpc_status_from_trailers_and_counts_deadline_drops() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let f = fixture(cfg());
        let layer = CircuitBreakerLayer::new(f.b.clone());
        let grpc = tower::service_fn(|_req: Request<Body>| async {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "14".parse().unwrap());
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"))
                .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(t)) });
            let mut r = Response::new(body::boxed(body));
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            Ok::<_, ProxyError>(r)
        });
        for i in 0..4 {
            let rsp = layer.layer(grpc).oneshot(Request::new(body::empty())).await;
            rsp.unwrap().into_body().collect().await.unwrap();
            assert_eq!(f.b.state(), State::Closed, "after {i}");
        }
        // The fifth failure is a call cut by its deadline.
        let hang = tower::service_fn(|_req: Request<Body>| futures::future::pending());
        let mut req = Request::new(body::empty());
        req.extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_millis(10)));
        let cut =
            tokio::time::timeout(Duration::from_millis(10), layer.layer(hang).oneshot(req)).await;
        assert!(cut.is_err());
        assert_eq!(f.b.state(), State::Open);
    }
}
