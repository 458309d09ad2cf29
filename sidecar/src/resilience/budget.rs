//! The retry budget: a hard cap on what retries add to the traffic. Over any
//! window of `window` length, whenever it starts,
//!
//! ```text
//! retries ≤ ratio × requests + minPerSecond × window
//! ```
//!
//! Per-request attempt limits cannot stop a retry storm — when an upstream is
//! down every request retries, multiplying its load exactly when it can least
//! take it. A budget shared by all requests to an upstream bounds the
//! amplification instead; the reserve lets a quiet caller still retry.
//!
//! How it is kept exact without remembering every event: let `F(t)` be
//! `retries − ratio × requests` counted since the budget was made. A window
//! `[s, t]` holds `F(t) − F(s⁻)` of excess retries (`F(s⁻)`: just before
//! `s`), so a retry at `t` is allowed iff `F(t) + 1 − min F(s⁻) ≤ reserve`
//! over every `s` in `[t − window, t]`; checking it at every retry makes it
//! hold for every window (a window's last retry was checked against it, and
//! later requests only add credit). The minimum is kept per tenth of the
//! window: a bucket remembers the lowest `F` it saw just before an instant
//! with events. Taking whole buckets can only look further back than the
//! window, which finds a lower minimum and refuses sooner — never later.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use trellis_api::proxy;

/// What one retry weighs; ratios are kept to six decimals, in integers, so
/// the balance never drifts however long the proxy runs.
const UNIT: i128 = 1_000_000;
/// Buckets per window: how much further than the window the minimum may look.
const BUCKETS: u32 = 10;

/// One upstream's (or route's) retry budget; shared by every request to it.
#[derive(Debug)]
pub struct RetryBudget {
    /// `ratio × UNIT`: the credit one request earns.
    per_request: i128,
    /// `minPerSecond × window × UNIT`.
    reserve: i128,
    window: Duration,
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    base: Instant,
    width_nanos: u128,
    /// `F` now, in `UNIT`s.
    balance: i128,
    /// The latest instant an event was counted at.
    last: Option<Instant>,
    /// `(bucket number since base, lowest F just before an instant with events in it)`.
    lows: Vec<(u64, i128)>,
}

impl Ledger {
    fn index(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.base).as_nanos();
        u64::try_from(since / self.width_nanos).unwrap_or(u64::MAX)
    }

    /// The instant of an event, never before the previous one (callers read
    /// the clock before they take the lock), and `F` just before it.
    fn at(&mut self, now: Instant) -> Instant {
        let now = self.last.map_or(now, |last| now.max(last));
        if self.last != Some(now) {
            self.last = Some(now);
            let index = self.index(now);
            let len = self.lows.len() as u64;
            let slot = &mut self.lows[(index % len) as usize];
            if slot.0 == index {
                slot.1 = slot.1.min(self.balance);
            } else {
                *slot = (index, self.balance);
            }
        }
        now
    }

    /// The lowest `F(s⁻)` for `s` in `[from, to]`, by whole buckets.
    fn low(&self, from: Instant, to: Instant) -> i128 {
        let (first, last) = (self.index(from), self.index(to));
        self.lows
            .iter()
            .filter(|(i, _)| (first..=last).contains(i))
            .map(|(_, low)| *low)
            .min()
            .unwrap_or(self.balance)
    }
}

impl RetryBudget {
    pub fn new(policy: &proxy::RetryBudget) -> Self {
        Self::with_base(policy, Instant::now())
    }

    fn with_base(policy: &proxy::RetryBudget, base: Instant) -> Self {
        let window: Duration = policy.window.as_std();
        let width_nanos = (window.as_nanos() / u128::from(BUCKETS)).max(1);
        // The window's start may fall one bucket before its `BUCKETS` whole ones.
        let slots = usize::try_from(window.as_nanos() / width_nanos + 2).unwrap_or(usize::MAX);
        let micros = |x: f64| (x * UNIT as f64).floor() as i128;
        RetryBudget {
            per_request: micros(policy.ratio.get()),
            reserve: micros(f64::from(policy.min_per_second) * window.as_secs_f64()),
            window,
            ledger: Mutex::new(Ledger {
                base,
                width_nanos,
                balance: 0,
                last: None,
                lows: vec![(u64::MAX, 0); slots],
            }),
        }
    }

    /// Counts one request (its first attempt; retries are withdrawals).
    pub fn deposit(&self, now: Instant) {
        let mut ledger = self.lock();
        ledger.at(now);
        ledger.balance -= self.per_request;
    }

    /// Takes one retry from the budget; `false` if any window ending now
    /// would hold more retries than it allows.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut ledger = self.lock();
        let now = ledger.at(now);
        let from = now.checked_sub(self.window).unwrap_or(ledger.base);
        let low = ledger.low(from, now);
        if ledger.balance + UNIT - low <= self.reserve {
            ledger.balance += UNIT;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Counters stay consistent even if a holder panicked: nothing spans two updates.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
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

    const S: fn(u64) -> Duration = Duration::from_secs;

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
    fn a_spent_window_recovers_as_it_slides() {
        let t0 = Instant::now();
        let b = budget(0.5, 1, 10, t0);
        for _ in 0..20 {
            b.deposit(t0);
        }
        // 10 earned + 10 reserve.
        assert_eq!(withdraw_all(&b, t0), 20);
        // Every window ending before t0 + 10 s still holds them.
        assert_eq!(withdraw_all(&b, t0 + S(9)), 0);
        assert_eq!(withdraw_all(&b, t0 + S(10)), 0);
        // Once t0 has left the window, the reserve is back, and new requests earn.
        let t1 = t0 + S(12);
        for _ in 0..4 {
            b.deposit(t1);
        }
        assert_eq!(withdraw_all(&b, t1), 12);
    }

    #[test]
    fn a_window_that_starts_after_the_requests_still_counts_the_retries() {
        // Requests at 0 s earn retries, spent at 5 s. A window that starts
        // just after 0 s holds those retries but not the requests: only the
        // reserve (10) backs them.
        let t0 = Instant::now();
        let b = budget(1.0, 1, 10, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        let t5 = t0 + S(5);
        assert_eq!(withdraw_all(&b, t5), 10);
        // (0 s, 10 s] holds 10 retries and no request: full.
        assert_eq!(withdraw_all(&b, t0 + S(10)), 0);
        // Five requests at 11 s: [5 s, 11 s] may hold 5 + 10 retries.
        let t11 = t0 + S(11);
        for _ in 0..5 {
            b.deposit(t11);
        }
        assert_eq!(withdraw_all(&b, t11), 5);
        // [5 s, 15 s] is still full; once 5 s has left, (11 s, 16 s] has room for the reserve.
        assert_eq!(withdraw_all(&b, t0 + S(15)), 0);
        assert_eq!(withdraw_all(&b, t0 + S(16)), 10);
    }

    /// Windows of every start: retries ≤ ratio × requests + reserve, at
    /// any moment, for events arriving at random instants.
    #[test]
    fn no_window_ever_holds_more_than_the_cap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let (ratio, min_per_second, window) = (0.2, 2, 4);
        let b = budget(ratio, min_per_second, window, t0);
        // (time, is_retry)
        let mut events: Vec<(Duration, bool)> = Vec::new();
        let mut t = Duration::ZERO;
        while t < S(30) {
            t += Duration::from_millis(rng.random_range(0..40));
            if rng.random_bool(0.6) {
                b.deposit(t0 + t);
                events.push((t, false));
            } else if b.try_withdraw(t0 + t) {
                events.push((t, true));
            }
        }
        let retries = events.iter().filter(|e| e.1).count();
        assert!(retries > 100, "the test must reach the cap: {retries}");
        let cap = |q: usize| ratio * q as f64 + f64::from(min_per_second) * window as f64;
        let w = S(window);
        for &(at, _) in &events {
            for (from, to) in [(at, at + w), (at.saturating_sub(w), at)] {
                let inside = events.iter().filter(|(e, _)| (from..=to).contains(e));
                let (r, q) = inside.fold(
                    (0, 0),
                    |(r, q), e| if e.1 { (r + 1, q) } else { (r, q + 1) },
                );
                assert!(
                    r as f64 <= cap(q) + 1e-9,
                    "[{from:?}, {to:?}]: {r} retries for {q} requests"
                );
            }
        }
    }
}
