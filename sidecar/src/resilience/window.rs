//! A time-bucketed sliding window of counters, shared by the retry budget and
//! the circuit breaker.
//!
//! The window is cut into a fixed number of buckets; a bucket older than the
//! window is reset when its slot is reused. Memory is fixed, updates are O(1),
//! and a sum is O(buckets). The window therefore slides by one bucket at a
//! time: what is counted is between `window × (n-1)/n` and `window` old.

use std::time::Duration;

use tokio::time::Instant;

/// How many buckets a window is cut into.
pub(crate) const BUCKETS: usize = 10;

#[derive(Debug)]
pub(crate) struct SlidingWindow<C> {
    base: Instant,
    width_nanos: u128,
    /// `(bucket number since base, counters)`; slot = number % len.
    slots: Vec<(u64, C)>,
}

impl<C: Default + Copy> SlidingWindow<C> {
    pub(crate) fn new(window: Duration, base: Instant) -> Self {
        let width_nanos = (window.as_nanos() / BUCKETS as u128).max(1);
        SlidingWindow {
            base,
            width_nanos,
            slots: vec![(0, C::default()); BUCKETS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.base).as_nanos();
        u64::try_from(since / self.width_nanos).unwrap_or(u64::MAX)
    }

    /// The counters of the bucket `now` falls in.
    pub(crate) fn current(&mut self, now: Instant) -> &mut C {
        let index = self.index(now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(index % len) as usize];
        if slot.0 != index {
            *slot = (index, C::default());
        }
        &mut slot.1
    }

    /// Every bucket still inside the window at `now`.
    pub(crate) fn live(&self, now: Instant) -> impl Iterator<Item = &C> {
        let index = self.index(now);
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(i, _)| *i <= index && index - *i < len)
            .map(|(_, c)| c)
    }

    pub(crate) fn clear(&mut self) {
        self.slots.fill((0, C::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::<u32>::new(Duration::from_secs(10), t0);
        *w.current(t0) += 1;
        *w.current(t0 + Duration::from_secs(5)) += 2;
        let sum = |w: &SlidingWindow<u32>, s: f64| -> u32 {
            w.live(t0 + Duration::from_secs_f64(s)).sum()
        };
        assert_eq!(sum(&w, 5.0), 3);
        assert_eq!(sum(&w, 9.9), 3);
        // The first bucket [0, 1s) leaves at 10s, the second at 15s.
        assert_eq!(sum(&w, 10.0), 2);
        assert_eq!(sum(&w, 14.9), 2);
        assert_eq!(sum(&w, 15.0), 0);
        // Reusing a slot resets it.
        *w.current(t0 + Duration::from_secs(20)) += 4;
        assert_eq!(sum(&w, 20.0), 4);
        w.clear();
        assert_eq!(sum(&w, 20.0), 0);
    }
}
