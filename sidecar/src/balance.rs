//! The endpoints of one upstream and the choice among them: power of two
//! choices over peak-EWMA latency, weighted by requests in flight.
//!
//! Why peak-EWMA: an endpoint that just got slow should lose traffic at once
//! (the estimate jumps to a slower sample), while one that gets fast again
//! earns traffic back gradually (the estimate decays). Why two random choices
//! rather than the global minimum: it is O(1), needs no lock across endpoints
//! and does not herd every proxy onto the same "best" endpoint.
//!
//! Hooks for the resilience layers (outlier detection, retries):
//! - [`EndpointSet::set_filter`] installs an [`EndpointFilter`] (ejections,
//!   kept outside the balancer, keyed by address) asked at every pick and
//!   told the endpoint list after every discovery update.
//! - [`EndpointSet::set_observer`] installs an [`OutcomeObserver`] that hears the
//!   outcome of every request sent to every endpoint of the upstream.
//! - [`TriedEndpoints`], a request extension, lists the endpoints earlier attempts
//!   of the same request used; the next pick avoids them while others are left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use rand::Rng;

use crate::error::ProxyError;

/// How fast a peak decays back toward newer samples (and toward zero while idle).
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint nothing was sent to yet: optimistic, so new
/// endpoints get tried, but not zero, so they are not flooded.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// What a failed attempt costs in the estimate: a failing endpoint answers
/// fast, and must not attract traffic for it.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave bad state behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One address of an upstream (a pod's sidecar, or an app in local mode).
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
}

#[derive(Debug)]
struct Ewma {
    /// Nanoseconds.
    cost: f64,
    at: Instant,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                cost: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests sent to this endpoint whose response head has not arrived yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current (decayed) latency estimate.
    pub fn ewma_latency(&self) -> Duration {
        Duration::from_nanos(self.decayed_cost(Instant::now()) as u64)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Feeds one response latency into the estimate.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let mut e = lock(&self.ewma);
        let rtt = rtt.as_nanos() as f64;
        if rtt > e.cost {
            // Peak: a slower sample replaces the estimate at once.
            e.cost = rtt;
        } else {
            let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            e.cost = e.cost * w + rtt * (1.0 - w);
        }
        e.at = now;
    }

    /// A failed attempt: make the endpoint look slow for a while.
    pub fn observe_failure(&self) {
        self.observe(FAILURE_PENALTY);
    }

    fn decayed_cost(&self, now: Instant) -> f64 {
        let e = lock(&self.ewma);
        let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
        // Idle endpoints drift toward zero, so a once-slow endpoint is probed again.
        e.cost * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Latency estimate times the queue a new request would join.
    fn load(&self, now: Instant) -> f64 {
        self.decayed_cost(now) * (self.in_flight() as f64 + 1.0)
    }
}

/// Decrements the in-flight count of an endpoint when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of one request sent to one endpoint.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// A response head arrived (any status: the observer decides what a failure is).
    Response {
        status: StatusCode,
        /// `grpc-status` when it came in the head (trailers-only responses).
        grpc_status: Option<u16>,
        latency: Duration,
    },
    /// The attempt failed before a response head: connect failure, reset…
    Failed {
        error: ProxyError,
        latency: Duration,
    },
    /// The attempt was dropped before it finished (a per-try or request timeout fired).
    Cancelled { latency: Duration },
}

/// Hears the outcome of every attempt to every endpoint of one upstream.
/// Outlier detection implements this (and ejects through its [`EndpointFilter`]).
/// Called on the request path: keep it short and never block.
pub trait OutcomeObserver: Send + Sync + 'static {
    fn record(&self, set: &EndpointSet, endpoint: &Arc<Endpoint>, outcome: Outcome);
}

/// Outlier state kept outside the balancer: asked at every pick.
pub trait EndpointFilter: Send + Sync + 'static {
    /// Whether `addr` must be skipped now.
    fn is_ejected(&self, addr: SocketAddr, now: tokio::time::Instant) -> bool;
    /// The endpoints after a discovery update (and when installed).
    fn set_endpoints(&self, _addrs: &[SocketAddr]) {}
}

/// Request extension shared by all attempts of one request (clone the
/// extensions into each attempt): the endpoints already tried, in order.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(Arc<Mutex<Vec<SocketAddr>>>);

impl TriedEndpoints {
    pub fn push(&self, addr: SocketAddr) {
        lock(&self.0).push(addr);
    }

    pub fn list(&self) -> Vec<SocketAddr> {
        lock(&self.0).clone()
    }
}

/// An endpoint's standing with the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Ready,
    /// Outlier detection took it out of rotation.
    Ejected,
    /// Discovery lost its source; the endpoint is still used.
    Stale,
}

impl EndpointState {
    pub const ALL: [EndpointState; 3] = [
        EndpointState::Ready,
        EndpointState::Ejected,
        EndpointState::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Ejected => "ejected",
            EndpointState::Stale => "stale",
        }
    }
}

/// The endpoints of one upstream, as discovery last saw them.
pub struct EndpointSet {
    peer: String,
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    resolved: AtomicBool,
    stale: AtomicBool,
    observer: RwLock<Option<Arc<dyn OutcomeObserver>>>,
    filter: RwLock<Option<Arc<dyn EndpointFilter>>>,
}

impl std::fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSet")
            .field("peer", &self.peer)
            .field("endpoints", &self.snapshot())
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl EndpointSet {
    pub fn new(peer: impl Into<String>) -> Self {
        EndpointSet {
            peer: peer.into(),
            endpoints: RwLock::new(Arc::from(Vec::new())),
            resolved: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            observer: RwLock::new(None),
            filter: RwLock::new(None),
        }
    }

    /// The upstream's name.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Replaces the addresses. Endpoints that stay keep their latency
    /// estimate, ejection and in-flight count; requests in flight to a removed
    /// endpoint finish normally.
    pub fn update(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        addrs.sort();
        addrs.dedup();
        let current = self.snapshot();
        let next: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|a| {
                current
                    .iter()
                    .find(|e| e.addr == a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(a)))
            })
            .collect();
        let addrs: Vec<SocketAddr> = next.iter().map(|e| e.addr).collect();
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(next);
        if let Some(f) = self.filter() {
            f.set_endpoints(&addrs);
        }
        self.resolved.store(true, Ordering::Release);
        self.stale.store(false, Ordering::Release);
    }

    /// Discovery lost its source: the last known endpoints stay in use.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Release);
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Whether discovery has answered at least once (even with no endpoints).
    pub fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<[Arc<Endpoint>]> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs (or removes) the outcome observer of this upstream.
    pub fn set_observer(&self, observer: Option<Arc<dyn OutcomeObserver>>) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = observer;
    }

    /// Installs (or removes) the outlier filter of this upstream; it is told
    /// the current endpoints at once.
    pub fn set_filter(&self, filter: Option<Arc<dyn EndpointFilter>>) {
        if let Some(f) = &filter {
            let addrs: Vec<SocketAddr> = self.snapshot().iter().map(|e| e.addr).collect();
            f.set_endpoints(&addrs);
        }
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    fn filter(&self) -> Option<Arc<dyn EndpointFilter>> {
        self.filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `endpoint` may take requests now (not ejected).
    pub fn is_available(&self, endpoint: &Endpoint) -> bool {
        self.filter()
            .is_none_or(|f| !f.is_ejected(endpoint.addr, tokio::time::Instant::now()))
    }

    /// What `endpoint` is to callers now, as `/endpoints` and `trellis_endpoints` say.
    pub fn state(&self, endpoint: &Endpoint) -> EndpointState {
        if !self.is_available(endpoint) {
            EndpointState::Ejected
        } else if self.is_stale() {
            EndpointState::Stale
        } else {
            EndpointState::Ready
        }
    }

    /// Reports an attempt's outcome to the observer, if one is installed.
    pub fn record(&self, endpoint: &Arc<Endpoint>, outcome: Outcome) {
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(o) = observer {
            o.record(self, endpoint, outcome);
        }
    }

    /// Picks an endpoint for one attempt: two random available endpoints,
    /// the less loaded wins. Endpoints in `avoid` are used only when nothing
    /// else is available. `None`: no endpoint is available at all.
    pub fn pick(&self, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let all = self.snapshot();
        let now = Instant::now();
        let filter = self.filter();
        let tnow = tokio::time::Instant::from_std(now);
        let available: Vec<&Arc<Endpoint>> = all
            .iter()
            .filter(|e| filter.as_ref().is_none_or(|f| !f.is_ejected(e.addr, tnow)))
            .collect();
        let fresh: Vec<&Arc<Endpoint>> = available
            .iter()
            .copied()
            .filter(|e| !avoid.contains(&e.addr))
            .collect();
        let candidates = if fresh.is_empty() { available } else { fresh };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (candidates[a], candidates[b]);
                Some(if ea.load(now) <= eb.load(now) { ea } else { eb }.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn update_keeps_state_of_endpoints_that_stay() {
        let set = EndpointSet::new("p");
        assert!(!set.is_resolved());
        set.update([addr(1), addr(2)]);
        assert!(set.is_resolved());
        let one = set.snapshot()[0].clone();
        one.observe(Duration::from_millis(50));
        set.update([addr(1), addr(3)]);
        let snap = set.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(Arc::ptr_eq(&snap[0], &one));
        assert_eq!(snap[1].addr(), addr(3));
    }

    #[test]
    fn pick_prefers_the_faster_endpoint() {
        let set = EndpointSet::new("p");
        set.update([addr(1), addr(2)]);
        set.snapshot()[1].observe(Duration::from_millis(100));
        for _ in 0..50 {
            assert_eq!(set.pick(&[]).map(|e| e.addr()), Some(addr(1)));
        }
    }

    #[test]
    fn pick_weighs_in_flight_requests() {
        let set = EndpointSet::new("p");
        set.update([addr(1), addr(2)]);
        let busy = set.snapshot()[0].clone();
        let _guards: Vec<InFlight> = (0..10).map(|_| busy.start()).collect();
        assert_eq!(set.pick(&[]).map(|e| e.addr()), Some(addr(2)));
    }

    #[test]
    fn pick_skips_ejected_and_avoided_endpoints() {
        /// Ejects what the test says.
        #[derive(Default)]
        struct Ejected(Mutex<Vec<SocketAddr>>);
        impl EndpointFilter for Ejected {
            fn is_ejected(&self, addr: SocketAddr, _: tokio::time::Instant) -> bool {
                lock(&self.0).contains(&addr)
            }
        }
        let set = EndpointSet::new("p");
        let ejected = Arc::new(Ejected::default());
        set.set_filter(Some(ejected.clone()));
        set.update([addr(1), addr(2), addr(3)]);
        lock(&ejected.0).push(addr(1));
        for _ in 0..50 {
            let got = set.pick(&[addr(2)]).map(|e| e.addr());
            assert_eq!(got, Some(addr(3)));
        }
        // Avoidance yields when nothing else is left; ejection does not.
        lock(&ejected.0).push(addr(3));
        assert_eq!(set.pick(&[addr(2)]).map(|e| e.addr()), Some(addr(2)));
        lock(&ejected.0).push(addr(2));
        assert!(set.pick(&[]).is_none());
        lock(&ejected.0).retain(|a| *a != addr(2));
        assert_eq!(set.pick(&[]).map(|e| e.addr()), Some(addr(2)));
        assert!(!set.is_available(&set.snapshot()[0]));
    }

    #[test]
    fn peak_jumps_up_and_decays_down() {
        let e = Endpoint::new(addr(1));
        e.observe(Duration::from_millis(100));
        assert!(e.ewma_latency() >= Duration::from_millis(99));
        e.observe(Duration::from_millis(1));
        // One fast sample right after does not erase the peak.
        assert!(e.ewma_latency() > Duration::from_millis(50));
    }
}
