//! How long to wait before retry number `n`.
//!
//! Exponential (`base × 2^(n-1)`, capped at `max`) so a struggling upstream
//! gets room to recover, jittered so that many callers that failed together
//! do not come back together. A `Retry-After` from the upstream is honoured:
//! it says when the server expects to cope again, so waiting less is
//! pointless, but it is capped at `max` so a server cannot park our callers.

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use rand::Rng;
use trellis_api::crd::Jitter;
use trellis_api::proxy;

/// The backoff of one retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(policy: &proxy::Backoff) -> Self {
        Backoff {
            base: policy.base.as_std(),
            // A max below base would make the sequence shrink; treat base as the floor.
            max: policy.max.as_std().max(policy.base.as_std()),
            jitter: policy.jitter,
        }
    }

    /// The un-jittered wait before retry `retry` (1 = the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry `retry`, jittered with `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(retry);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.random::<f64>()),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + (ceiling - half).mul_f64(rng.random::<f64>())
            }
        }
    }

    /// The wait before retry `retry` when the failed response may carry a
    /// `Retry-After`: at least what the server asked for, at most `max`.
    pub fn delay_after<R: Rng + ?Sized>(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let delay = self.delay(retry, rng);
        match retry_after {
            Some(asked) => delay.max(asked.min(self.max)),
            None => delay,
        }
    }
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP date,
/// relative to `now`. A date in the past means "now"; garbage means absent.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 seconds is "forever"; the cap makes it `max` anyway.
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use trellis_api::Duration as ApiDuration;

    fn backoff(base_ms: u64, max_ms: u64, jitter: Jitter) -> Backoff {
        Backoff::new(&proxy::Backoff {
            base: ApiDuration::from_millis(base_ms),
            max: ApiDuration::from_millis(max_ms),
            jitter,
        })
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let b = backoff(25, 1000, Jitter::None);
        let seq: Vec<_> = (1..=8).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            seq,
            [25, 50, 100, 200, 400, 800, 1000, 1000].map(MS).to_vec()
        );
        // Far retries neither overflow nor exceed max.
        assert_eq!(b.ceiling(u32::MAX), MS(1000));
        assert_eq!(b.ceiling(0), MS(25));
    }

    #[test]
    fn no_jitter_is_exact() {
        let b = backoff(25, 1000, Jitter::None);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay(3, &mut rng), MS(100));
    }

    #[test]
    fn full_jitter_stays_in_zero_to_ceiling() {
        let b = backoff(25, 1000, Jitter::Full);
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=10 {
            let ceiling = b.ceiling(n);
            let mut lowest = ceiling;
            for _ in 0..200 {
                let d = b.delay(n, &mut rng);
                assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
                lowest = lowest.min(d);
            }
            // Really jittered: some draws land in the lower half.
            assert!(lowest < ceiling / 2, "retry {n}: lowest {lowest:?}");
        }
    }

    #[test]
    fn equal_jitter_stays_in_half_to_ceiling() {
        let b = backoff(40, 1000, Jitter::Equal);
        let mut rng = StdRng::seed_from_u64(9);
        for n in 1..=10 {
            let ceiling = b.ceiling(n);
            for _ in 0..200 {
                let d = b.delay(n, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {n}: {d:?}");
            }
        }
    }

    #[test]
    fn max_below_base_is_lifted_to_base() {
        let b = backoff(100, 10, Jitter::None);
        assert_eq!(b.ceiling(1), MS(100));
        assert_eq!(b.ceiling(5), MS(100));
    }

    #[test]
    fn retry_after_is_a_floor_capped_by_max() {
        let b = backoff(25, 1000, Jitter::None);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay_after(1, Some(MS(300)), &mut rng), MS(300));
        assert_eq!(
            b.delay_after(1, Some(Duration::from_secs(120)), &mut rng),
            MS(1000)
        );
        // A shorter Retry-After does not shorten the backoff.
        assert_eq!(b.delay_after(4, Some(MS(10)), &mut rng), MS(200));
        assert_eq!(b.delay_after(1, None, &mut rng), MS(25));
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hv = HeaderValue::from_static;
        assert_eq!(
            parse_retry_after(&hv("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_retry_after(&hv(" 0 "), now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        let later = HeaderValue::from_str(&later).unwrap();
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(10))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        let past = HeaderValue::from_str(&past).unwrap();
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&hv("soon"), now), None);
        assert_eq!(parse_retry_after(&hv("-1"), now), None);
        assert_eq!(parse_retry_after(&hv(""), now), None);
        assert_eq!(
            parse_retry_after(&hv("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
