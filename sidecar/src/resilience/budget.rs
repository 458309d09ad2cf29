//! The retry budget: retries may add at most `ratio` of the traffic, plus a
//! small reserve so a quiet caller can still retry.
//!
//! Per-request attempt limits cannot stop a retry storm — when an upstream is
//! down every request retries, multiplying its load exactly when it can least
//! take it. A budget shared by all requests to an upstream bounds the
//! amplification instead: over the sliding window,
//! `retries ≤ ratio × requests + minPerSecond × window_seconds`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use trellis_api::proxy;

use super::window::SlidingWindow;

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    requests: u64,
    retries: u64,
}

/// One upstream's (or route's) retry budget; shared by every request to it.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// `minPerSecond × window`: retries allowed even without traffic.
    reserve: f64,
    window: Mutex<SlidingWindow<Counts>>,
}

impl RetryBudget {
    pub fn new(policy: &proxy::RetryBudget) -> Self {
        Self::with_base(policy, Instant::now())
    }

    fn with_base(policy: &proxy::RetryBudget, base: Instant) -> Self {
        let window: Duration = policy.window.as_std();
        RetryBudget {
            ratio: policy.ratio.get(),
            reserve: f64::from(policy.min_per_second) * window.as_secs_f64(),
            window: Mutex::new(SlidingWindow::new(window, base)),
        }
    }

    /// Counts one request (its first attempt; retries are withdrawals).
    pub fn deposit(&self, now: Instant) {
        self.lock().current(now).requests += 1;
    }

    /// Takes one retry from the budget; `false` if it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let (requests, retries) = window
            .live(now)
            .fold((0u64, 0u64), |(q, r), c| (q + c.requests, r + c.retries));
        let allowed = self.ratio * requests as f64 + self.reserve;
        if (retries + 1) as f64 <= allowed {
            window.current(now).retries += 1;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlidingWindow<Counts>> {
        // Counters stay consistent even if a holder panicked: nothing spans two updates.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::Duration as ApiDuration;
    use trellis_api::bounded::Ratio;

    fn budget(ratio: f64, min_per_second: u32, window_s: u64, base: Instant) -> RetryBudget {
        RetryBudget::with_base(
            &proxy::RetryBudget {
                ratio: Ratio::new(ratio).unwrap(),
                min_per_second,
                window: ApiDuration::from_secs(window_s),
            },
            base,
        )
    }

    fn withdraw_all(b: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
            assert!(n < 100_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn retries_are_ratio_of_requests_plus_reserve() {
        let t0 = Instant::now();
        let b = budget(0.2, 1, 10, t0);
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 0.2 × 100 + 1/s × 10 s = 30.
        assert_eq!(withdraw_all(&b, t0), 30);
        // Ten more requests earn two more retries.
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 2);
    }

    #[test]
    fn reserve_allows_retries_without_traffic() {
        let t0 = Instant::now();
        assert_eq!(withdraw_all(&budget(0.2, 3, 5, t0), t0), 15);
        assert_eq!(withdraw_all(&budget(0.5, 0, 5, t0), t0), 0);
    }

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let b = budget(0.5, 0, 10, t0);
        for _ in 0..20 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 10);
        // Still inside the window: spent.
        assert_eq!(withdraw_all(&b, t0 + Duration::from_secs(9)), 0);
        // Requests and retries of t0 have slid out; new requests earn anew.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(withdraw_all(&b, t1), 0);
        for _ in 0..4 {
            b.deposit(t1);
        }
        assert_eq!(withdraw_all(&b, t1), 2);
    }

    #[test]
    fn old_retries_stop_counting_before_old_requests_do_not() {
        let t0 = Instant::now();
        let b = budget(1.0, 0, 10, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(withdraw_all(&b, t5), 10);
        // At 10s the requests are gone but the retries of 5s are not: nothing left.
        let t10 = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            b.deposit(t10);
        }
        assert_eq!(withdraw_all(&b, t10), 0);
        // At 15s the retries left too.
        let t15 = t0 + Duration::from_secs(15);
        assert_eq!(withdraw_all(&b, t15), 5);
    }
}
